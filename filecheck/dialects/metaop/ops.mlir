// RUN: cmswitch-opt %s | cmswitch-opt | filecheck %s
// RUN: cmswitch-opt %s --print-op-generic | cmswitch-opt | filecheck %s
// RUN: cmswitch-opt %s --print-op-generic | filecheck %s --check-prefix=GENERIC
// Round trip of every metaop statement and of the typed attributes (mode, location,
// tensor reference) through the custom formats and the generic form.

metaop.segment 0 attributes {ops = "conv1,relu1", predicted = 41234 : i64} {
  metaop.switch TOM [40, 48]
  metaop.load_weight "conv1" [0, 8] {tiles = array<i64: 1, 2>, copies = 4 : i64, bytes = 9408 : i64}
  metaop.mem_load "x" <dram> <a[40:44]> {bytes = 150528 : i64, window = 4096 : i64}
  metaop.parallel {
    metaop.write_operand "scores" [8, 20] {input = #metaop.ref<"kt", gb>, tiles = array<i64: 1, 4>, copies = 3 : i64, bytes = 98304 : i64, instances = 12 : i64}
    metaop.mvm "conv1" [0, 8] {vectors = 12544 : i64, k = 147 : i64, n = 64 : i64, input = #metaop.ref<"x", a[40:44]>, output = #metaop.ref<"c1", a[44:48]>, window = 100 : i64}
    metaop.vec "relu" "relu1" {ops = 802816 : i64, inputs = [#metaop.ref<"c1", a[44:48]>], outputs = [#metaop.ref<"r1", gb>, #metaop.ref<"layer1.0/r:2", dram>]}
    metaop.mvm "fc" [20, 24] {vectors = 16 : i64, k = 64 : i64, n = 32 : i64, input = #metaop.ref<"r1", gb>, output = #metaop.ref<"f1", stream>}
    metaop.vec "gelu" "g1" {ops = 4096 : i64, inputs = [#metaop.ref<"f1", stream>], outputs = [#metaop.ref<"g1", dram>]}
  }
  metaop.mem_move "r1" <gb> <a[44:48]> {bytes = 4096 : i64}
  metaop.mem_store "r1" <a[44:48]> <dram> {bytes = 802816 : i64}
  metaop.switch TOC [40, 48]
}

// CHECK:      metaop.segment 0 attributes {ops = "conv1,relu1", predicted = 41234 : i64} {
// CHECK-NEXT:   metaop.switch TOM [40, 48]
// CHECK-NEXT:   metaop.load_weight "conv1" [0, 8] {tiles = array<i64: 1, 2>, copies = 4 : i64, bytes = 9408 : i64}
// CHECK-NEXT:   metaop.mem_load "x" <dram> <a[40:44]> {bytes = 150528 : i64, window = 4096 : i64}
// CHECK-NEXT:   metaop.parallel {
// CHECK-NEXT:     metaop.write_operand "scores" [8, 20] {input = #metaop.ref<"kt", gb>, tiles = array<i64: 1, 4>, copies = 3 : i64, bytes = 98304 : i64, instances = 12 : i64}
// CHECK-NEXT:     metaop.mvm "conv1" [0, 8] {vectors = 12544 : i64, k = 147 : i64, n = 64 : i64, input = #metaop.ref<"x", a[40:44]>, output = #metaop.ref<"c1", a[44:48]>, window = 100 : i64}
// CHECK-NEXT:     metaop.vec "relu" "relu1" {ops = 802816 : i64, inputs = [#metaop.ref<"c1", a[44:48]>], outputs = [#metaop.ref<"r1", gb>, #metaop.ref<"layer1.0/r:2", dram>]}
// CHECK-NEXT:     metaop.mvm "fc" [20, 24] {vectors = 16 : i64, k = 64 : i64, n = 32 : i64, input = #metaop.ref<"r1", gb>, output = #metaop.ref<"f1", stream>}
// CHECK-NEXT:     metaop.vec "gelu" "g1" {ops = 4096 : i64, inputs = [#metaop.ref<"f1", stream>], outputs = [#metaop.ref<"g1", dram>]}
// CHECK-NEXT:   }
// CHECK-NEXT:   metaop.mem_move "r1" <gb> <a[44:48]> {bytes = 4096 : i64}
// CHECK-NEXT:   metaop.mem_store "r1" <a[44:48]> <dram> {bytes = 802816 : i64}
// CHECK-NEXT:   metaop.switch TOC [40, 48]
// CHECK-NEXT: }

// GENERIC: "metaop.switch"() <{mode = #metaop<mode TOM>, arrays = array<i64: 40, 48>}>
// GENERIC: "metaop.mem_load"() <{tensor = "x", source = #metaop.loc<dram>, dest = #metaop.loc<a[40:44]>,
// GENERIC: input = #metaop.ref<"kt", gb>
// GENERIC: outputs = [#metaop.ref<"r1", gb>, #metaop.ref<"layer1.0/r:2", dram>]
// GENERIC: inputs = [#metaop.ref<"f1", stream>]
// GENERIC: "metaop.switch"() <{mode = #metaop<mode TOC>
