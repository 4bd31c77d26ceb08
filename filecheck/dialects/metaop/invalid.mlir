// RUN: cmswitch-opt %s --split-input-file --parsing-diagnostics --verify-diagnostics | filecheck %s
// Every metaop verifier and the typed attributes' syntax (mode, location, tensor reference).

metaop.switch TOX [0, 8]
// CHECK: Expected `TOM`, or `TOC`.

// -----

metaop.switch TOM [8, 8]
// CHECK: 'arrays' must be a non-empty range [lo, hi), got [8, 8]

// -----

metaop.load_weight "conv1" [0, 7] {tiles = array<i64: 1, 2>, copies = 4 : i64, bytes = 9408 : i64}
// CHECK: 7 arrays cannot hold 4 copies of 1x2 tiles

// -----

metaop.mvm "conv1" [0, 8] {vectors = 0 : i64, k = 147 : i64, n = 64 : i64, input = #metaop.ref<"x", gb>, output = #metaop.ref<"y", gb>}
// CHECK: 'vectors' must be positive, got 0

// -----

metaop.mvm "conv1" [0, 8] {vectors = 4 : i64, k = 147 : i64, n = 64 : i64, input = #metaop.ref<"x", sram>, output = #metaop.ref<"y", gb>}
// CHECK: Expected 'a' (a location is dram, gb, stream or a[LO:HI])

// -----

metaop.mvm "conv1" [0, 8] {vectors = 4 : i64, k = 147 : i64, n = 64 : i64, input = #metaop.ref<"x$in", gb>, output = #metaop.ref<"y", gb>}
// CHECK: bad tensor reference 'x$in@gb': the name allows letters, digits, _ . : / -

// -----

metaop.mem_load "x" <dram> <a[4:4]> {bytes = 16 : i64}
// CHECK: bad location 'a[4:4]': empty array range

// -----

metaop.mvm "conv1" [0, 8] {vectors = 4 : i64, k = 147 : i64, n = 64 : i64, input = "x@gb", output = #metaop.ref<"y", gb>}
// CHECK: "x@gb" should be of base attribute metaop.ref

// -----

metaop.vec "relu" "r" {ops = 4 : i64, outputs = []}
// CHECK: 'outputs' lists no tensor

// -----

metaop.mem_load "x" <gb> <a[0:4]> {bytes = 16 : i64}
// CHECK: metaop.mem_load reads from dram, not 'gb'

// -----

metaop.mem_move "x" <dram> <a[0:4]> {bytes = 16 : i64}
// CHECK: metaop.mem_move moves data on chip only

// -----

metaop.parallel {
  metaop.switch TOM [0, 8]
}
// CHECK: 'metaop.switch' cannot appear inside metaop.parallel

// -----

metaop.mvm "fc" [0, 8] {vectors = 4 : i64, k = 64 : i64, n = 64 : i64, input = #metaop.ref<"x", stream>, output = #metaop.ref<"y", gb>}
// CHECK: its input x@stream: only a VEC statement reads a stream

// -----

metaop.mem_store "x" <stream> <dram> {bytes = 16 : i64}
// CHECK: metaop.mem_store cannot move a stream (only the VEC statement fused to its writer reads it)
