// RUN: cmswitch-opt %s --split-input-file --verify-diagnostics | filecheck %s

// Output size does not follow from input, kernel, strides, pads: (224+6-7)/2+1 = 112.
%x = "test.op"() : () -> tensor<1x3x224x224xf32>
%c = cim.conv2d %x {weight = "w", kernel = array<i64: 7, 7>, strides = array<i64: 2, 2>, pads = array<i64: 3, 3, 3, 3>, dilations = array<i64: 1, 1>, groups = 1 : i64} : tensor<1x3x224x224xf32> -> tensor<1x64x111x112xf32>
// CHECK: output spatial size [111, 112] does not match [112, 112]

// -----

%x = "test.op"() : () -> tensor<1x6x8x8xf32>
%c = cim.conv2d %x {weight = "w", kernel = array<i64: 3, 3>, strides = array<i64: 1, 1>, pads = array<i64: 1, 1, 1, 1>, dilations = array<i64: 1, 1>, groups = 4 : i64} : tensor<1x6x8x8xf32> -> tensor<1x8x8x8xf32>
// CHECK: groups=4 must divide input channels 6 and output channels 8

// -----

%x = "test.op"() : () -> tensor<1x8x8x8xf32>
%c = cim.conv2d %x {weight = "w", kernel = array<i64: 3, 0>, strides = array<i64: 1, 1>, pads = array<i64: 1, 1, 1, 1>, dilations = array<i64: 1, 1>, groups = 1 : i64} : tensor<1x8x8x8xf32> -> tensor<1x8x8x8xf32>
// CHECK: 'kernel' entries must be positive, got [3, 0]

// -----

%x = "test.op"() : () -> tensor<4x512xf32>
%y = cim.matmul %x {weight = "w"} : tensor<4x512xf32> -> tensor<2x10xf32>
// CHECK: leading dims differ: input [4], output [2]

// -----

%x = "test.op"() : () -> tensor<4x512xf32>
%y = cim.matmul %x {weight = "w", weight_slice = array<i64: 0, 256, 0, 10>} : tensor<4x512xf32> -> tensor<4x10xf32>
// CHECK: 'weight_slice' [0, 256, 0, 10] covers 256x10, but the operator's weight is 512x10

// -----

%a = "test.op"() : () -> tensor<2x8x16xf32>
%b = "test.op"() : () -> tensor<2x8x4xf32>
%c = cim.dyn_matmul %a, %b : tensor<2x8x16xf32>, tensor<2x8x4xf32> -> tensor<2x8x4xf32>
// CHECK: contracted dims differ: lhs K=16, rhs K=8

// -----

%a = "test.op"() : () -> tensor<4xf32>
%b = cim.vector "frobnicate" %a : (tensor<4xf32>) -> tensor<4xf32>
// CHECK: unknown vector kind 'frobnicate'

// -----

%a = "test.op"() : () -> tensor<4xf32>
%s = cim.segment 0 -> tensor<4xf32> {
  %b = cim.vector "relu" %a : (tensor<4xf32>) -> tensor<4xf32>
  cim.yield %a, %b : tensor<4xf32>, tensor<4xf32>
}
// CHECK: cim.yield types

// -----

// The segment annotations (issue 18): declared on cim.segment, checked by its verifier.
%a = "test.op"() : () -> tensor<4xf32>
%s = cim.segment 0 attributes {preloaded = -1 : i64} -> tensor<4xf32> {
  %b = cim.vector "relu" %a : (tensor<4xf32>) -> tensor<4xf32>
  cim.yield %b : tensor<4xf32>
}
// CHECK: cim.segment 0: 'preloaded' must be a non-negative integer

// -----

%a = "test.op"() : () -> tensor<4xf32>
%s = cim.segment 1 attributes {pool = array<i64: 9, 4>} -> tensor<4xf32> {
  %b = cim.vector "relu" %a : (tensor<4xf32>) -> tensor<4xf32>
  cim.yield %b : tensor<4xf32>
}
// CHECK: cim.segment 1: 'pool' must be array<i64: lo, hi> with 0 <= lo <= hi

// -----

%a = "test.op"() : () -> tensor<4xf32>
%s = cim.segment 2 attributes {places = {a = "sram"}} -> tensor<4xf32> {
  %b = cim.vector "relu" %a : (tensor<4xf32>) -> tensor<4xf32>
  cim.yield %b : tensor<4xf32>
}
// CHECK: cim.segment 2: 'places' maps tensor names to one of pool, gb, dram, hold_in, hold_out

// -----

// An element-wise kind keeps its input's shape.
%a = "test.op"() : () -> tensor<1x16x16x16xf32>
%b = cim.vector "relu" %a : (tensor<1x16x16x16xf32>) -> tensor<1x99x16x16xf32>
// CHECK: 'relu' keeps its input's shape [1, 16, 16, 16], but the result is [1, 99, 16, 16]

// -----

// Operands of a broadcasting kind broadcast to the result (numpy rules).
%a = "test.op"() : () -> tensor<1x512xf32>
%b = "test.op"() : () -> tensor<7x3xf32>
%c = cim.vector "add" %a, %b : (tensor<1x512xf32>, tensor<7x3xf32>) -> tensor<1x512xf32>
// CHECK: 'add' operand [7, 3] does not broadcast to the result [1, 512]

// -----

// A concat outputs every element of its inputs.
%a = "test.op"() : () -> tensor<1x2xf32>
%b = "test.op"() : () -> tensor<1x2xf32>
%c = cim.vector "concat" %a, %b : (tensor<1x2xf32>, tensor<1x2xf32>) -> tensor<1x3xf32>
// CHECK: 'concat' of [[1, 2], [1, 2]] has 4 elements, but the result [1, 3] has 3

// -----

// A reshape keeps the element count.
%a = "test.op"() : () -> tensor<2x2xf32>
%b = cim.vector "reshape" %a : (tensor<2x2xf32>) -> tensor<3x3xf32>
// CHECK: 'reshape' keeps the 4 elements of [2, 2], but the result [3, 3] has 9
