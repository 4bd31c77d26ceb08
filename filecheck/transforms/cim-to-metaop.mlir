// RUN: cmswitch-opt %s --cim-segment --cim-allocate --cim-to-metaop | filecheck %s
// RUN: cmswitch-opt %s --cim-segment --cim-allocate --cim-to-metaop --emit=asm | filecheck %s --check-prefix=ASM

// The conv of cim-allocate.mlir (3 copies in arrays 0..2, a pool of 30 memory arrays 66..95).
// Arrays start in compute mode, so only 66..95 switch (TOM).  The input streams from
// DRAM into the pool with a 3-row line-buffer window:
// 32 ch x 3 rows x 16 cols = 1536 bytes; the output goes straight to DRAM.
func.func @main(%x: tensor<1x32x16x16xf32>) -> tensor<1x32x16x16xf32> {
  %y = cim.conv2d %x {weight = "w", kernel = array<i64: 3, 3>, strides = array<i64: 1, 1>, pads = array<i64: 1, 1, 1, 1>, dilations = array<i64: 1, 1>, groups = 1 : i64} : tensor<1x32x16x16xf32> -> tensor<1x32x16x16xf32>
  func.return %y : tensor<1x32x16x16xf32>
}
// CHECK:      metaop.segment 0 attributes {ops = "w", predicted = 1548 : i64} {
// CHECK-NEXT:   metaop.switch TOM [66, 96]
// CHECK-NEXT:   metaop.load_weight "w" [0, 3] {tiles = array<i64: 1, 1>, copies = 3 : i64, bytes = 9216 : i64}
// CHECK-NEXT:   metaop.parallel {
// CHECK-NEXT:     metaop.mem_load "x" <dram> <a[66:96]> {bytes = 8192 : i64, window = 1536 : i64}
// CHECK-NEXT:     metaop.mvm "w" [0, 3] {vectors = 256 : i64, k = 288 : i64, n = 32 : i64, input = #metaop.ref<"x", a[66:96]>, output = #metaop.ref<"y", dram>}
// CHECK-NEXT:   }
// CHECK-NEXT: }

// ASM:      .arch dynaplasia arrays=96 rows=320 cols=320
// ASM:      .tensor x bytes=8192 input
// ASM-NEXT: .tensor y bytes=8192 output
// ASM-NEXT: .segment 0 ops=w predicted=1548
// ASM-NEXT:   CM.switch TOM a[66:96]
// ASM-NEXT:   CIM.load_weight w tiles=1x1 copies=3 bytes=9216 -> a[0:3]
// ASM-NEXT:   parallel {
// ASM-NEXT:     MEM.load x@dram -> a[66:96] bytes=8192 window=1536
// ASM-NEXT:     CIM.mvm w a[0:3] vectors=256 k=288 n=32 in=x@a[66:96] out=y@dram
// ASM-NEXT:   }
// ASM-NEXT: .end
