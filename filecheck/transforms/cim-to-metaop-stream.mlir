// RUN: cmswitch-opt %s --cim-segment --cim-allocate --cim-to-metaop --emit=asm | filecheck %s

// Element-wise fusion (DESIGN.md §9.13) on the `dynaplasia-fused` chip: the matmul's output `a` has one reader, a
// ReLU in the same segment, so the matmul hands it over as a stream (no port, no
// window=), and the ReLU writes the model output to DRAM.  `b` feeds two readers, so
// it is no stream.
module attributes {cim.arch = "dynaplasia-fused"} {
func.func @main(%x: tensor<64x256xf32>) -> (tensor<64x256xf32>, tensor<64x256xf32>) {
  %a = cim.matmul %x {weight = "wa"} : tensor<64x256xf32> -> tensor<64x256xf32>
  %r = cim.vector "relu" %a : (tensor<64x256xf32>) -> tensor<64x256xf32>
  %b = cim.matmul %x {weight = "wb"} : tensor<64x256xf32> -> tensor<64x256xf32>
  %g = cim.vector "gelu" %b : (tensor<64x256xf32>) -> tensor<64x256xf32>
  %s = cim.vector "add" %b, %g : (tensor<64x256xf32>, tensor<64x256xf32>) -> tensor<64x256xf32>
  func.return %r, %s : tensor<64x256xf32>, tensor<64x256xf32>
}
}
// CHECK:      CIM.mvm wa a[{{[0-9:]+}}] vectors=64 k=256 n=256 in=x@{{[^ ]+}} out=a@stream{{$}}
// CHECK-NEXT: VEC.relu r ops={{[0-9]+}} in=a@stream out=r@dram{{$}}
// CHECK-NEXT: CIM.mvm wb a[{{[0-9:]+}}] vectors=64 k=256 n=256 in=x@{{[^ ]+}} out=b@{{(gb|dram|a\[[0-9:]+\])}}
// CHECK-NEXT: VEC.gelu g ops={{[0-9]+}} in=b@{{[^ ]+}} out=g@stream{{$}}
// CHECK-NEXT: VEC.add s ops={{[0-9]+}} in=b@{{[^ ]+}},g@stream out=s@dram{{$}}
