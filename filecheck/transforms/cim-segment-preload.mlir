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
//   A: load 3200 + pipeline (16384 input + 102400 of B's weights) / 32 = 3712 + fill 0
//      (a lone MVM) = 6912
//   B: no load + pipeline max(2048 compute, 102400 of C's weights / 32 = 3200) + 0
//      = 3200;  C likewise with D's weights: 3200
//   D: no load + C's output held on chip is read as 256 x 1600 = 409600 bytes from
//      the 32 hold arrays that keep it (409600 / 12800), at 32 x 4 = 128 B/cycle:
//      3200 + 0 = 3200
// The activations between segments stay on chip (`hold`): A's 409600-byte output in
// 32 hold arrays of 12800 bytes, written at 128 B/cycle in A's 3712-cycle pipeline
// (3200 cycles) and read by B in 3200.  Total 6912 + 3 x 3200 = 16512.
//
// Without preloading the best plan is {A,B} then {C,D}: per segment, loads 2 x 3200
// + A's output (409600 B, written once and read once: 819200 B) streamed through the
// pool of the 46 arrays left (46 x 4 = 184 B/cycle; its 64-row window of 102400 B
// does not fit the 81920-B global buffer) = 4452.2 + fill 8 (A's first vector delays B) = 10860; total 21720.
func.func @chain(%x: tensor<256x64xf32>) -> tensor<256x64xf32> {
  %a = cim.matmul %x {weight = "A"} : tensor<256x64xf32> -> tensor<256x1600xf32>
  %b = cim.matmul %a {weight = "B"} : tensor<256x1600xf32> -> tensor<256x64xf32>
  %c = cim.matmul %b {weight = "C"} : tensor<256x64xf32> -> tensor<256x1600xf32>
  %d = cim.matmul %c {weight = "D"} : tensor<256x1600xf32> -> tensor<256x64xf32>
  func.return %d : tensor<256x64xf32>
}
// CHECK:      cim.segment 0 attributes {predicted_cycles = 6912 : i64, hold}
// CHECK-NEXT:   %a = cim.matmul %x {weight = "A"}
// CHECK:      cim.segment 1 attributes {predicted_cycles = 3200 : i64, hold, preloaded = 1 : i64}
// CHECK-NEXT:   %b = cim.matmul %0 {weight = "B"}
// CHECK:      cim.segment 2 attributes {predicted_cycles = 3200 : i64, hold, preloaded = 1 : i64}
// CHECK-NEXT:   %c = cim.matmul %1 {weight = "C"}
// CHECK:      cim.segment 3 attributes {predicted_cycles = 3200 : i64, preloaded = 1 : i64}
// CHECK-NEXT:   %d = cim.matmul %2 {weight = "D"}

// OFF:      cim.segment 0 attributes {predicted_cycles = 10860 : i64}
// OFF-NEXT:   %a = cim.matmul %x {weight = "A"}
// OFF-NEXT:   %b = cim.matmul %a {weight = "B"}
// OFF:      cim.segment 1 attributes {predicted_cycles = 10860 : i64}
// OFF-NEXT:   %c = cim.matmul %0 {weight = "C"}
// OFF-NEXT:   %d = cim.matmul %c {weight = "D"}
// OFF-NOT:  preloaded
