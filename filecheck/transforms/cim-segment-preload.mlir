// RUN: cmswitch-opt %s --cim-segment | filecheck %s
// RUN: cmswitch-opt %s --cim-segment=preload=0 | filecheck %s --check-prefix=OFF

// Weight-load overlap (DESIGN.md §9.1), by hand on dynaplasia (320x320 one-bit cells,
// 8-bit weights: 40 weights per array row; 32 B/cycle DRAM and weight-write port;
// 8-cycle MVM).  A and C are 64 -> 1600 (1 row tile x 40 column tiles = 40 arrays),
// B and D 1600 -> 64 (5 x 2 = 10 arrays); each weight is 102400 bytes, 3200 cycles to
// load.  All four need 100 > 96 arrays, so there are at least two segments.  256
// vectors take 256 x 8 = 2048 cycles per copy.
//
// With preloading every segment loads the next operator's weights during its own
// pipeline, in arrays it leaves free; only A's load (3200) is exposed:
//   A: load 3200 + pipeline (16384 input + 102400 of B's weights) / 32 = 3712 + fill 8
//      = 6920
//   B: no load + pipeline max(2048 compute, 102400 of C's weights / 32 = 3200) + 8
//      = 3208;  C likewise with D's weights: 3208
//   D: no load + 2048 compute + 8 = 2056
// (Feeding each operator, 256 x (64 + 1600) = 425984 bytes, through 32 memory-mode
// arrays at 4 B/cycle plus the 32 B/cycle global buffer takes 2662 cycles: below
// those bounds; D's 44 arrays feed it in exactly 2048.)  Total 15392.  The
// activations between segments stay on chip (`hold`): A's 409600-byte output in B's
// 32 memory-mode arrays of 12800 bytes.
//
// Without preloading the best plan is {A,B} then {C,D}: per segment, loads 2 x 3200
// + feed of both operators 851968 bytes through 46 memory-mode arrays and the global
// buffer (46 x 4 + 32 = 216 B/cycle) = 3944 + fill 16 = 10360; total 20720.
func.func @chain(%x: tensor<256x64xf32>) -> tensor<256x64xf32> {
  %a = cim.matmul %x {weight = "A"} : tensor<256x64xf32> -> tensor<256x1600xf32>
  %b = cim.matmul %a {weight = "B"} : tensor<256x1600xf32> -> tensor<256x64xf32>
  %c = cim.matmul %b {weight = "C"} : tensor<256x64xf32> -> tensor<256x1600xf32>
  %d = cim.matmul %c {weight = "D"} : tensor<256x1600xf32> -> tensor<256x64xf32>
  func.return %d : tensor<256x64xf32>
}
// CHECK:      cim.segment 0 attributes {predicted_cycles = 6920 : i64, hold}
// CHECK-NEXT:   %a = cim.matmul %x {weight = "A"}
// CHECK:      cim.segment 1 attributes {predicted_cycles = 3208 : i64, hold, preloaded = 1 : i64}
// CHECK-NEXT:   %b = cim.matmul %0 {weight = "B"}
// CHECK:      cim.segment 2 attributes {predicted_cycles = 3208 : i64, hold, preloaded = 1 : i64}
// CHECK-NEXT:   %c = cim.matmul %1 {weight = "C"}
// CHECK:      cim.segment 3 attributes {predicted_cycles = 2056 : i64, preloaded = 1 : i64}
// CHECK-NEXT:   %d = cim.matmul %2 {weight = "D"}

// OFF:      cim.segment 0 attributes {predicted_cycles = 10360 : i64}
// OFF-NEXT:   %a = cim.matmul %x {weight = "A"}
// OFF-NEXT:   %b = cim.matmul %a {weight = "B"}
// OFF:      cim.segment 1 attributes {predicted_cycles = 10360 : i64}
// OFF-NEXT:   %c = cim.matmul %0 {weight = "C"}
// OFF-NEXT:   %d = cim.matmul %c {weight = "D"}
// OFF-NOT:  preloaded
