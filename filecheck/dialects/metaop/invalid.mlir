// RUN: cmswitch-opt %s --split-input-file --verify-diagnostics | filecheck %s

metaop.switch "TOX" [0, 8]
// CHECK: switch mode must be TOM or TOC, got 'TOX'

// -----

metaop.switch "TOM" [8, 8]
// CHECK: 'arrays' must be a non-empty range [lo, hi), got [8, 8]

// -----

metaop.load_weight "conv1" [0, 7] {tiles = array<i64: 1, 2>, copies = 4 : i64, bytes = 9408 : i64}
// CHECK: 7 arrays cannot hold 4 copies of 1x2 tiles

// -----

metaop.mvm "conv1" [0, 8] {vectors = 0 : i64, k = 147 : i64, n = 64 : i64, input = "x@gb", output = "y@gb"}
// CHECK: 'vectors' must be positive, got 0

// -----

metaop.mvm "conv1" [0, 8] {vectors = 4 : i64, k = 147 : i64, n = 64 : i64, input = "x@sram", output = "y@gb"}
// CHECK: bad tensor reference 'x@sram': expected NAME@LOCATION

// -----

metaop.mem_load "x" "gb" "a[0:4]" {bytes = 16 : i64}
// CHECK: metaop.mem_load reads from dram, not 'gb'

// -----

metaop.mem_move "x" "dram" "a[0:4]" {bytes = 16 : i64}
// CHECK: metaop.mem_move moves data on chip only

// -----

metaop.parallel {
  metaop.switch "TOM" [0, 8]
}
// CHECK: 'metaop.switch' cannot appear inside metaop.parallel
