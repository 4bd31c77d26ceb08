// RUN: cmswitch-opt %s --cim-segment | filecheck %s

// Must split: A (K = 2560 -> 8 row tiles, N = 400 -> 10 column tiles) needs 80 arrays,
// B (K = 400 -> 2, N = 400 -> 10) needs 20; 80 + 20 > 96, so A and B cannot share a
// segment.  The ReLU rides with A (segments start only at matrix ops).  Its output
// (4 x 400 bytes) is read only by B, but it does not stay on chip (`hold`): held data
// sits whole in hold arrays of its own, here one array (1600 B <= 12800 B) whose port
// moves 4 B/cycle, so writing it there takes 400 cycles, while DRAM takes the store
// and the reload at 32 B/cycle (2 x 50 cycles).
func.func @two(%x: tensor<4x2560xf32>) -> tensor<4x400xf32> {
  %a = cim.matmul %x {weight = "A"} : tensor<4x2560xf32> -> tensor<4x400xf32>
  %r = cim.vector "relu" %a : (tensor<4x400xf32>) -> tensor<4x400xf32>
  %b = cim.matmul %r {weight = "B"} : tensor<4x400xf32> -> tensor<4x400xf32>
  func.return %b : tensor<4x400xf32>
}
// CHECK:      %0 = cim.segment 0 attributes {predicted_cycles = {{[0-9]+}} : i64, compute_only} -> tensor<4x400xf32> {
// CHECK-NEXT:   %a = cim.matmul %x {weight = "A"}
// CHECK-NEXT:   %r = cim.vector "relu" %a
// CHECK-NEXT:   cim.yield %r : tensor<4x400xf32>
// CHECK-NEXT: }
// CHECK-NEXT: %1 = cim.segment 1 attributes {predicted_cycles = {{[0-9]+}} : i64, compute_only} -> tensor<4x400xf32> {
// CHECK-NEXT:   %b = cim.matmul %0 {weight = "B"}
// CHECK-NEXT:   cim.yield %b : tensor<4x400xf32>
// CHECK-NEXT: }
// CHECK-NEXT: func.return %1 : tensor<4x400xf32>
