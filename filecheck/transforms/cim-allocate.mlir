// RUN: cmswitch-opt %s --split-input-file --cim-segment --cim-allocate | filecheck %s
// RUN: cmswitch-opt %s --split-input-file --cim-segment --cim-allocate=solver=highs | filecheck %s

// Memory mode wins.  Default hardware: mvm 8 cycles/vector, 4 B/cycle per memory
// array, 32 B/cycle global buffer and DRAM, 32 B/cycle weight writes.
// 3x3 conv 32->32 on 16x16: M = 256, K = 288, N = 32 -> one array per copy.
//   compute of one copy 256*8 = 2048 cycles; load of one copy 288*32/32 = 288 cycles;
//   copies worth loading: 2 (saves 1024 >= 288), 3 (saves 341 >= 288), not 4 (170).
//   feed 256*(288+32) = 81920 B; DRAM 8192 in + 8192 out = 16384 B -> L >= 512.
// Best latency: 3 copies, L = 2048/3 = 682.7, fed at 81920/682.7 = 120 B/cycle =
// 32 (global buffer) + 4*22 (memory arrays): 3 compute + 22 memory arrays.
// (All-compute would be feed bound at 81920/32 = 2560 cycles.)
// Predicted = load max(9216/32, 3*9216/32) = 864 + 682.7 + fill 8 = 1555.
func.func @mem_wins(%x: tensor<1x32x16x16xf32>) -> tensor<1x32x16x16xf32> {
  %y = cim.conv2d %x {weight = "w", kernel = array<i64: 3, 3>, strides = array<i64: 1, 1>, pads = array<i64: 1, 1, 1, 1>, dilations = array<i64: 1, 1>, groups = 1 : i64} : tensor<1x32x16x16xf32> -> tensor<1x32x16x16xf32>
  func.return %y : tensor<1x32x16x16xf32>
}
// CHECK:      cim.segment 0 attributes {predicted_cycles = 1555 : i64, compute_arrays = 3 : i64, memory_arrays = 22 : i64, load_cycles = 864 : i64, latency_cycles = 683 : i64, solver_status = "optimal"}
// CHECK-NEXT: cim.conv2d %x {copies = 3 : i64, arrays = array<i64: 0, 3>, memory = array<i64: 74, 96>,

// -----

// All-compute wins.  Matmul 100 vectors of K = 320 -> N = 40: one array per copy,
// compute 800 cycles/copy, but DRAM must carry 100*320 + 100*40 = 36000 B at 32 B/cycle
// -> L >= 1125 whatever the allocation; at L = 1125 the feed 100*360 = 36000 B needs
// 32 B/cycle = the global buffer alone, and one copy (800 <= 1125) suffices:
// 1 compute array, 0 memory arrays.  Predicted = 400 (load) + 1125 + 8 = 1533.
func.func @compute_wins(%x: tensor<100x320xf32>) -> tensor<100x40xf32> {
  %y = cim.matmul %x {weight = "w"} : tensor<100x320xf32> -> tensor<100x40xf32>
  func.return %y : tensor<100x40xf32>
}
// CHECK:      cim.segment 0 attributes {predicted_cycles = 1533 : i64, compute_arrays = 1 : i64, memory_arrays = 0 : i64, load_cycles = 400 : i64, latency_cycles = 1125 : i64, solver_status = "optimal"}
// CHECK-NEXT: cim.matmul %x {copies = 1 : i64, arrays = array<i64: 0, 1>, weight = "w"}
