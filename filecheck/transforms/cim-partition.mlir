// RUN: cmswitch-opt %s --split-input-file --cim-partition | filecheck %s
// RUN: cmswitch-opt %s --split-input-file --cim-partition=max-arrays=16 | filecheck %s --check-prefix=K16
// RUN: cmswitch-opt %s --split-input-file --cim-partition=shape=balanced | filecheck %s --check-prefix=BAL

// ResNet-18's layer4 3x3 conv, 512 -> 512 channels, at the default hardware (arrays of
// 320 rows x 40 8-bit weights): K = 512*3*3 = 4608 -> 15 row tiles, N = 512 -> 13
// column tiles: 195 arrays > 96, so it splits.  max-arrays defaults to 96/2 = 48:
// 15 row tiles x floor(48/15) = 3 column tiles = 120 output channels per piece, so
// N splits into 120,120,120,120,32 and K stays whole (no partial sums).
func.func @conv(%x: tensor<1x512x7x7xf32>) -> tensor<1x512x7x7xf32> {
  %y = cim.conv2d %x {weight = "layer4.weight", kernel = array<i64: 3, 3>, strides = array<i64: 1, 1>, pads = array<i64: 1, 1, 1, 1>, dilations = array<i64: 1, 1>, groups = 1 : i64} : tensor<1x512x7x7xf32> -> tensor<1x512x7x7xf32>
  func.return %y : tensor<1x512x7x7xf32>
}
// CHECK:      %y.k0n0 = cim.conv2d %x {{.*}}weight_slice = array<i64: 0, 4608, 0, 120>} : tensor<1x512x7x7xf32> -> tensor<1x120x7x7xf32>
// CHECK-NEXT: %y.k0n1 = cim.conv2d %x {{.*}}weight_slice = array<i64: 0, 4608, 120, 240>} : tensor<1x512x7x7xf32> -> tensor<1x120x7x7xf32>
// CHECK-NEXT: %y.k0n2 = cim.conv2d %x {{.*}}weight_slice = array<i64: 0, 4608, 240, 360>} : tensor<1x512x7x7xf32> -> tensor<1x120x7x7xf32>
// CHECK-NEXT: %y.k0n3 = cim.conv2d %x {{.*}}weight_slice = array<i64: 0, 4608, 360, 480>} : tensor<1x512x7x7xf32> -> tensor<1x120x7x7xf32>
// CHECK-NEXT: %y.k0n4 = cim.conv2d %x {{.*}}weight_slice = array<i64: 0, 4608, 480, 512>} : tensor<1x512x7x7xf32> -> tensor<1x32x7x7xf32>
// CHECK-NEXT: %y = cim.vector "concat" %y.k0n0, %y.k0n1, %y.k0n2, %y.k0n3, %y.k0n4 {axis = 1 : i64} : {{.*}} -> tensor<1x512x7x7xf32>
// CHECK-NEXT: func.return %y

// -----

// A K = 11008 (LLaMA2-7B down projection) x N = 120 weight: 35 x 3 = 105 arrays > 96.
// With max-arrays=16: pieces of 16 row tiles (5120 rows) x 1 column tile (40): K ranges
// [0,5120) [5120,10240) [10240,11008), N ranges [0,40) [40,80) [80,120): 9 matmuls, a
// partial-sum add per column range, one concat.
func.func @down(%v: tensor<4x11008xf32>) -> tensor<4x120xf32> {
  %d = cim.matmul %v {weight = "down.weight"} : tensor<4x11008xf32> -> tensor<4x120xf32>
  func.return %d : tensor<4x120xf32>
}
// K16:      %d.in0 = cim.vector "slice" %v {axis = 1 : i64, start = 0 : i64, end = 5120 : i64} : (tensor<4x11008xf32>) -> tensor<4x5120xf32>
// K16-NEXT: %d.in1 = cim.vector "slice" %v {axis = 1 : i64, start = 5120 : i64, end = 10240 : i64} : (tensor<4x11008xf32>) -> tensor<4x5120xf32>
// K16-NEXT: %d.in2 = cim.vector "slice" %v {axis = 1 : i64, start = 10240 : i64, end = 11008 : i64} : (tensor<4x11008xf32>) -> tensor<4x768xf32>
// K16-NEXT: %d.k0n0 = cim.matmul %d.in0 {weight = "down.weight", weight_slice = array<i64: 0, 5120, 0, 40>} : tensor<4x5120xf32> -> tensor<4x40xf32>
// K16-NEXT: %d.k1n0 = cim.matmul %d.in1 {weight = "down.weight", weight_slice = array<i64: 5120, 10240, 0, 40>} : tensor<4x5120xf32> -> tensor<4x40xf32>
// K16-NEXT: %d.k2n0 = cim.matmul %d.in2 {weight = "down.weight", weight_slice = array<i64: 10240, 11008, 0, 40>} : tensor<4x768xf32> -> tensor<4x40xf32>
// K16-NEXT: %d.n0 = cim.vector "psum_add" %d.k0n0, %d.k1n0, %d.k2n0 : (tensor<4x40xf32>, tensor<4x40xf32>, tensor<4x40xf32>) -> tensor<4x40xf32>
// K16:      %d.k2n2 = cim.matmul %d.in2 {weight = "down.weight", weight_slice = array<i64: 10240, 11008, 80, 120>} : tensor<4x768xf32> -> tensor<4x40xf32>
// K16-NEXT: %d.n2 = cim.vector "psum_add"
// K16-NEXT: %d = cim.vector "concat" %d.n0, %d.n1, %d.n2 {axis = 1 : i64} : (tensor<4x40xf32>, tensor<4x40xf32>, tensor<4x40xf32>) -> tensor<4x120xf32>

// -----

// An operator that fits (K = 320, N = 40: one array) is left alone.
func.func @small(%v: tensor<4x320xf32>) -> tensor<4x40xf32> {
  %d = cim.matmul %v {weight = "w"} : tensor<4x320xf32> -> tensor<4x40xf32>
  func.return %d : tensor<4x40xf32>
}
// CHECK: %d = cim.matmul %v {weight = "w"} : tensor<4x320xf32> -> tensor<4x40xf32>

// -----

// shape=balanced: K = 8192 (26 row tiles) x N = 4096 (103 column tiles), 48 arrays a
// piece.  Activation elements moved per input vector by row tiles per piece kt:
// full-k kt = 26 (1 column tile, 103 N groups each re-reading K): 103*8192 = 843,776;
// kt = 4 (K ranges of 1280: 7 pieces; 12 column tiles = 480 columns: 9 N groups):
// 9*8192 + 2*7*4096 (partial sums) + 2*8192 (slices) = 147,456, the fewest (kt = 3
// ties; the taller piece wins).  So 7 slices of 1280 (the last 512), 9 x 7 pieces.
func.func @wide(%v: tensor<64x8192xf32>) -> tensor<64x4096xf32> {
  %w = cim.matmul %v {weight = "wide.weight"} : tensor<64x8192xf32> -> tensor<64x4096xf32>
  func.return %w : tensor<64x4096xf32>
}
// BAL:      %w.in0 = cim.vector "slice" %v {axis = 1 : i64, start = 0 : i64, end = 1280 : i64}
// BAL:      %w.in6 = cim.vector "slice" %v {axis = 1 : i64, start = 7680 : i64, end = 8192 : i64} : (tensor<64x8192xf32>) -> tensor<64x512xf32>
// BAL-NEXT: %w.k0n0 = cim.matmul %w.in0 {weight = "wide.weight", weight_slice = array<i64: 0, 1280, 0, 480>} : tensor<64x1280xf32> -> tensor<64x480xf32>
// BAL:      %w.k6n8 = cim.matmul %w.in6 {weight = "wide.weight", weight_slice = array<i64: 7680, 8192, 3840, 4096>} : tensor<64x512xf32> -> tensor<64x256xf32>
// BAL-NEXT: %w.n8 = cim.vector "psum_add"
// BAL-NEXT: %w = cim.vector "concat" %w.n0, %w.n1, %w.n2, %w.n3, %w.n4, %w.n5, %w.n6, %w.n7, %w.n8 {axis = 1 : i64}
