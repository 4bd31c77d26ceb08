// RUN: cmswitch-opt %s --split-input-file --cim-segment --cim-allocate | filecheck %s
// RUN: cmswitch-opt %s --split-input-file --cim-segment --cim-allocate=solver=highs | filecheck %s

// Memory mode wins.  Default hardware: mvm 8 cycles/vector, 4 B/cycle per memory
// array, 32 B/cycle global buffer and DRAM, 32 B/cycle weight writes.
// 3x3 conv 32->32 on 16x16: M = 256, K = 288, N = 32 -> one array per copy.
//   compute of one copy 256*8 = 2048 cycles; load of one copy 288*32/32 = 288 cycles;
//   copies worth loading: 2 (saves 1024 >= 288), 3 (saves 341 >= 288), not 4 (170).
//   x (8192 B) is read as im2col vectors: 256*288 = 73728 B.  On chip it costs the
//   MEM.load's 8192 B + 73728 B of reads on its place and 8192 B of DRAM; read from
//   DRAM, 73728 B of DRAM.  y (8192 B) has no reader in the segment: straight to DRAM.
// Best latency: 3 copies, L = 2048/3 = 682.7; x in the pool: 81920 B / 682.7 =
// 120 B/cycle = 4*30 (the global buffer's 32 B/cycle is too little), DRAM
// (8192 + 8192) / 682.7 = 24 B/cycle: 3 compute + 30 memory arrays (a[66:96]).
// (All-compute would be bound at 73728/32 = 2304 cycles in DRAM.)
// Predicted = load max(9216/32, 3*9216/32) = 864 + 682.7 + fill 0 (one MVM) + one
// CM.switch TOM (1 cycle) = 1547.7.
func.func @mem_wins(%x: tensor<1x32x16x16xf32>) -> tensor<1x32x16x16xf32> {
  %y = cim.conv2d %x {weight = "w", kernel = array<i64: 3, 3>, strides = array<i64: 1, 1>, pads = array<i64: 1, 1, 1, 1>, dilations = array<i64: 1, 1>, groups = 1 : i64} : tensor<1x32x16x16xf32> -> tensor<1x32x16x16xf32>
  func.return %y : tensor<1x32x16x16xf32>
}
// CHECK:      cim.segment 0 attributes {predicted_cycles = 1548 : i64, pool = array<i64: 66, 96>, places = {x = "pool", y = "dram"}, compute_arrays = 3 : i64, memory_arrays = 30 : i64, load_cycles = 864 : i64, latency_cycles = 683 : i64, solver_status = "optimal", switch_cycles = 1 : i64}
// CHECK-NEXT: cim.conv2d %x {copies = 3 : i64, arrays = array<i64: 0, 3>,

// -----

// All-compute wins.  Matmul 100 vectors of K = 320 -> N = 40: one array per copy,
// compute 800 cycles/copy, but DRAM must carry 100*320 + 100*40 = 36000 B at 32 B/cycle
// -> L >= 1125 whatever the allocation (x is read once: on chip it would still cost
// its 32000 B of DRAM, so it is read from DRAM), and one copy (800 <= 1125)
// suffices: 1 compute array, 0 memory arrays, so the segment runs compute-only (no
// switches; with memory-mode arrays it would be no faster and pay two).  Predicted = 400 (load) + 1125 + fill 0 = 1525.
func.func @compute_wins(%x: tensor<100x320xf32>) -> tensor<100x40xf32> {
  %y = cim.matmul %x {weight = "w"} : tensor<100x320xf32> -> tensor<100x40xf32>
  func.return %y : tensor<100x40xf32>
}
// CHECK:      cim.segment 0 attributes {predicted_cycles = 1525 : i64, compute_only, places = {x = "dram", y = "dram"}, compute_arrays = 1 : i64, memory_arrays = 0 : i64, load_cycles = 400 : i64, latency_cycles = 1125 : i64, solver_status = "optimal", switch_cycles = 0 : i64}
// CHECK-NEXT: cim.matmul %x {copies = 1 : i64, arrays = array<i64: 0, 1>, weight = "w"}
