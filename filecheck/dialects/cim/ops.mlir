// RUN: cmswitch-opt %s | cmswitch-opt | filecheck %s
// Round trip of every cim op through the custom assembly formats.

func.func @main(%x: tensor<1x3x224x224xf32>, %q: tensor<1x12x128x64xf32>, %kt: tensor<1x12x64x128xf32>) -> tensor<1x64x112x112xf32> {
  %s = cim.segment 0 attributes {predicted_cycles = 10 : i64} -> tensor<1x64x112x112xf32> {
    %c = cim.conv2d %x {weight = "conv1.weight", kernel = array<i64: 7, 7>, strides = array<i64: 2, 2>, pads = array<i64: 3, 3, 3, 3>, dilations = array<i64: 1, 1>, groups = 1 : i64} : tensor<1x3x224x224xf32> -> tensor<1x64x112x112xf32>
    %r = cim.vector "relu" %c : (tensor<1x64x112x112xf32>) -> tensor<1x64x112x112xf32>
    cim.yield %r : tensor<1x64x112x112xf32>
  }
  %f = cim.vector "flatten" %s {axis = 1 : i64} : (tensor<1x64x112x112xf32>) -> tensor<1x802816xf32>
  %p = cim.matmul %f {weight = "fc.weight", weight_slice = array<i64: 0, 802816, 0, 10>, bias} : tensor<1x802816xf32> -> tensor<1x10xf32>
  %d = cim.dyn_matmul %q, %kt : tensor<1x12x128x64xf32>, tensor<1x12x64x128xf32> -> tensor<1x12x128x128xf32>
  %a, %b = cim.vector "split" %d {axis = 3 : i64} : (tensor<1x12x128x128xf32>) -> tensor<1x12x128x64xf32>, tensor<1x12x128x64xf32>
  %t = cim.segment 1 attributes {predicted_cycles = 7 : i64, hold, preloaded = 1 : i64, compute_only, pool = array<i64: 90, 96>, hold_arrays = array<i64: 80, 90>, places = {a = "pool", t = "hold_out"}, switch_cycles = 2 : i64} -> tensor<1x12x128x64xf32> {
    %e = cim.vector "relu" %a : (tensor<1x12x128x64xf32>) -> tensor<1x12x128x64xf32>
    cim.yield %e : tensor<1x12x128x64xf32>
  }
  func.return %s : tensor<1x64x112x112xf32>
}

// CHECK:      %s = cim.segment 0 attributes {predicted_cycles = 10 : i64} -> tensor<1x64x112x112xf32> {
// CHECK-NEXT:   %c = cim.conv2d %x {weight = "conv1.weight", kernel = array<i64: 7, 7>, strides = array<i64: 2, 2>, pads = array<i64: 3, 3, 3, 3>, dilations = array<i64: 1, 1>, groups = 1 : i64} : tensor<1x3x224x224xf32> -> tensor<1x64x112x112xf32>
// CHECK-NEXT:   %r = cim.vector "relu" %c : (tensor<1x64x112x112xf32>) -> tensor<1x64x112x112xf32>
// CHECK-NEXT:   cim.yield %r : tensor<1x64x112x112xf32>
// CHECK-NEXT: }
// CHECK:      %p = cim.matmul %f {bias, weight = "fc.weight", weight_slice = array<i64: 0, 802816, 0, 10>} : tensor<1x802816xf32> -> tensor<1x10xf32>
// CHECK:      %d = cim.dyn_matmul %q, %kt : tensor<1x12x128x64xf32>, tensor<1x12x64x128xf32> -> tensor<1x12x128x128xf32>
// CHECK:      %a, %b = cim.vector "split" %d {axis = 3 : i64} : (tensor<1x12x128x128xf32>) -> tensor<1x12x128x64xf32>, tensor<1x12x128x64xf32>
// The segment annotations (issue 18) round-trip as written:
// CHECK:      %t = cim.segment 1 attributes {predicted_cycles = 7 : i64, hold, preloaded = 1 : i64, compute_only, pool = array<i64: 90, 96>, hold_arrays = array<i64: 80, 90>, places = {a = "pool", t = "hold_out"}, switch_cycles = 2 : i64} -> tensor<1x12x128x64xf32> {
