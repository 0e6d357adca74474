// RUN: %ckec opt %s --spec %S/Inputs/pair.cke --pass-pipeline=place | filecheck %s
// place cuts each phase's program into one per rank (Inputs/pair.cke: prefill tensor
// parallel on [n0, n1], decode a pipeline n0 -> n1).
//
// Prefill, rank 0: the first half of every head group and FFN column block, the first half
// of the vocabulary for the LM head; row-parallel matmuls are marked as partial sums.
// CHECK: "cke.func"
// CHECK: "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_q.weight", shape = array<i64: 32, 64>, shard = array<i64: 0, 32, 0, 64>}
// CHECK: "cke.attention"{{.*}}heads = 1 : i64, kv_heads = 1 : i64, layer = 0 : i64
// CHECK: "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_output.weight", shape = array<i64: 64, 32>, shard = array<i64: 0, 64, 0, 32>}
// CHECK-NEXT: "cke.matmul"{{.*}}tp = "partial"
// CHECK: "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_down.weight", shape = array<i64: 64, 32>, shard = array<i64: 0, 64, 0, 32>}
// CHECK: "cke.weight"() {name = "output.weight", shape = array<i64: 32, 64>, shard = array<i64: 0, 32, 0, 64>}
// CHECK-NEXT: "cke.matmul"{{.*}}{tp = "vocab", vocab_bounds = array<i64: 0, 32, 64>, vocab_slice = array<i64: 0, 32, 64>}
// CHECK: group = array<i64: 0, 1>, layers = array<i64: 0, 1>, {{.*}}phase = "prefill", rank = 0 : i64, stage = 0 : i64, sym_name = "prefill_r0"
//
// Decode, rank 0 (stage 0): the embedding and layer 0, whose output goes to rank 1.
// CHECK: sym_name = "prefill_r1"
// CHECK: "cke.embed"
// CHECK-NOT: layer = 1
// CHECK: "dist.send"(%{{.*}}) {bytes = 256 : i64, peer = 1 : i64} : (tensor<1x64xf32>) -> ()
// CHECK-NEXT: "cke.return"() : () -> ()
// CHECK: group = array<i64: 0>, layers = array<i64: 0, 0>, phase = "decode", rank = 0 : i64, stage = 0 : i64, sym_name = "decode_r0"
//
// Decode, rank 1 (stage 1): receives the residual stream, runs layer 1 and the LM head.
// CHECK: "dist.recv"() {bytes = 256 : i64, peer = 0 : i64} : () -> tensor<1x64xf32>
// CHECK-NOT: "cke.embed"
// CHECK-NOT: layer = 0
// CHECK: "cke.argmax"
// CHECK: "cke.return"(%{{.*}}, %{{.*}}) : (tensor<1xi32>, tensor<1x64xf32>) -> ()
// CHECK: phase = "decode", rank = 1 : i64, stage = 1 : i64, sym_name = "decode_r1"
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%arg4: tensor<?xi32>, %arg5: i64, %arg6: memref<2x16x64xf32>, %arg7: memref<2x16x64xf32>):
    %55 = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %56 = "cke.embed"(%arg4, %55) : (tensor<?xi32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %57 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %58 = "cke.rmsnorm"(%56, %57) {eps = 1.000000e-05 : f64, layer = 0 : i64} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %59 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_q.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %60 = "cke.matmul"(%58, %59) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %61 = "cke.rope"(%60, %arg5) {head_dim = 32 : i64, layer = 0 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<?x64xf32>, i64) -> tensor<?x64xf32>
    %62 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_k.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %63 = "cke.matmul"(%58, %62) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %64 = "cke.rope"(%63, %arg5) {head_dim = 32 : i64, layer = 0 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<?x64xf32>, i64) -> tensor<?x64xf32>
    %65 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_v.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %66 = "cke.matmul"(%58, %65) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %67 = "cke.attention"(%61, %64, %66, %arg6, %arg7, %arg5) {head_dim = 32 : i64, heads = 2 : i64, kv_heads = 2 : i64, layer = 0 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>, tensor<?x64xf32>, memref<2x16x64xf32>, memref<2x16x64xf32>, i64) -> tensor<?x64xf32>
    %68 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_output.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %69 = "cke.matmul"(%67, %68) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %70 = "cke.add"(%56, %69) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %71 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %72 = "cke.rmsnorm"(%70, %71) {eps = 1.000000e-05 : f64, layer = 0 : i64} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %73 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_gate.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %74 = "cke.matmul"(%72, %73) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %75 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_up.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %76 = "cke.matmul"(%72, %75) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %77 = "cke.silu_mul"(%74, %76) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %78 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_down.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %79 = "cke.matmul"(%77, %78) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %80 = "cke.add"(%70, %79) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %81 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %82 = "cke.rmsnorm"(%80, %81) {eps = 1.000000e-05 : f64, layer = 1 : i64} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %83 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_q.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %84 = "cke.matmul"(%82, %83) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %85 = "cke.rope"(%84, %arg5) {head_dim = 32 : i64, layer = 1 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<?x64xf32>, i64) -> tensor<?x64xf32>
    %86 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_k.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %87 = "cke.matmul"(%82, %86) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %88 = "cke.rope"(%87, %arg5) {head_dim = 32 : i64, layer = 1 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<?x64xf32>, i64) -> tensor<?x64xf32>
    %89 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_v.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %90 = "cke.matmul"(%82, %89) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %91 = "cke.attention"(%85, %88, %90, %arg6, %arg7, %arg5) {head_dim = 32 : i64, heads = 2 : i64, kv_heads = 2 : i64, layer = 1 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>, tensor<?x64xf32>, memref<2x16x64xf32>, memref<2x16x64xf32>, i64) -> tensor<?x64xf32>
    %92 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_output.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %93 = "cke.matmul"(%91, %92) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %94 = "cke.add"(%80, %93) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %95 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %96 = "cke.rmsnorm"(%94, %95) {eps = 1.000000e-05 : f64, layer = 1 : i64} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %97 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_gate.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %98 = "cke.matmul"(%96, %97) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %99 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_up.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %100 = "cke.matmul"(%96, %99) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %101 = "cke.silu_mul"(%98, %100) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %102 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_down.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %103 = "cke.matmul"(%101, %102) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %104 = "cke.add"(%94, %103) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %105 = "cke.last_token"(%104) : (tensor<?x64xf32>) -> tensor<1x64xf32>
    %106 = "cke.weight"() {name = "output_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %107 = "cke.rmsnorm"(%105, %106) {eps = 1.000000e-05 : f64} : (tensor<1x64xf32>, tensor<64xf32>) -> tensor<1x64xf32>
    %108 = "cke.weight"() {name = "output.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %109 = "cke.matmul"(%107, %108) : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %110 = "cke.argmax"(%109) : (tensor<1x64xf32>) -> tensor<1xi32>
    "cke.return"(%110, %109) : (tensor<1xi32>, tensor<1x64xf32>) -> ()
  }) {max_tokens = 16 : i64, phase = "prefill", sym_name = "prefill"} : () -> ()
  "cke.func"() ({
  ^bb0(%arg0: tensor<1xi32>, %arg1: i64, %arg2: memref<2x16x64xf32>, %arg3: memref<2x16x64xf32>):
    %0 = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %1 = "cke.embed"(%arg0, %0) : (tensor<1xi32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %2 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %3 = "cke.rmsnorm"(%1, %2) {eps = 1.000000e-05 : f64, layer = 0 : i64} : (tensor<1x64xf32>, tensor<64xf32>) -> tensor<1x64xf32>
    %4 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_q.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %5 = "cke.matmul"(%3, %4) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %6 = "cke.rope"(%5, %arg1) {head_dim = 32 : i64, layer = 0 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<1x64xf32>, i64) -> tensor<1x64xf32>
    %7 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_k.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %8 = "cke.matmul"(%3, %7) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %9 = "cke.rope"(%8, %arg1) {head_dim = 32 : i64, layer = 0 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<1x64xf32>, i64) -> tensor<1x64xf32>
    %10 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_v.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %11 = "cke.matmul"(%3, %10) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %12 = "cke.attention"(%6, %9, %11, %arg2, %arg3, %arg1) {head_dim = 32 : i64, heads = 2 : i64, kv_heads = 2 : i64, layer = 0 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>, tensor<1x64xf32>, memref<2x16x64xf32>, memref<2x16x64xf32>, i64) -> tensor<1x64xf32>
    %13 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_output.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %14 = "cke.matmul"(%12, %13) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %15 = "cke.add"(%1, %14) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<1x64xf32>
    %16 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %17 = "cke.rmsnorm"(%15, %16) {eps = 1.000000e-05 : f64, layer = 0 : i64} : (tensor<1x64xf32>, tensor<64xf32>) -> tensor<1x64xf32>
    %18 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_gate.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %19 = "cke.matmul"(%17, %18) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %20 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_up.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %21 = "cke.matmul"(%17, %20) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %22 = "cke.silu_mul"(%19, %21) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<1x64xf32>
    %23 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_down.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %24 = "cke.matmul"(%22, %23) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %25 = "cke.add"(%15, %24) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<1x64xf32>
    %26 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %27 = "cke.rmsnorm"(%25, %26) {eps = 1.000000e-05 : f64, layer = 1 : i64} : (tensor<1x64xf32>, tensor<64xf32>) -> tensor<1x64xf32>
    %28 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_q.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %29 = "cke.matmul"(%27, %28) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %30 = "cke.rope"(%29, %arg1) {head_dim = 32 : i64, layer = 1 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<1x64xf32>, i64) -> tensor<1x64xf32>
    %31 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_k.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %32 = "cke.matmul"(%27, %31) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %33 = "cke.rope"(%32, %arg1) {head_dim = 32 : i64, layer = 1 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<1x64xf32>, i64) -> tensor<1x64xf32>
    %34 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_v.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %35 = "cke.matmul"(%27, %34) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %36 = "cke.attention"(%30, %33, %35, %arg2, %arg3, %arg1) {head_dim = 32 : i64, heads = 2 : i64, kv_heads = 2 : i64, layer = 1 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>, tensor<1x64xf32>, memref<2x16x64xf32>, memref<2x16x64xf32>, i64) -> tensor<1x64xf32>
    %37 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_output.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %38 = "cke.matmul"(%36, %37) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %39 = "cke.add"(%25, %38) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<1x64xf32>
    %40 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %41 = "cke.rmsnorm"(%39, %40) {eps = 1.000000e-05 : f64, layer = 1 : i64} : (tensor<1x64xf32>, tensor<64xf32>) -> tensor<1x64xf32>
    %42 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_gate.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %43 = "cke.matmul"(%41, %42) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %44 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_up.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %45 = "cke.matmul"(%41, %44) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %46 = "cke.silu_mul"(%43, %45) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<1x64xf32>
    %47 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_down.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %48 = "cke.matmul"(%46, %47) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %49 = "cke.add"(%39, %48) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<1x64xf32>
    %50 = "cke.weight"() {name = "output_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %51 = "cke.rmsnorm"(%49, %50) {eps = 1.000000e-05 : f64} : (tensor<1x64xf32>, tensor<64xf32>) -> tensor<1x64xf32>
    %52 = "cke.weight"() {name = "output.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %53 = "cke.matmul"(%51, %52) : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %54 = "cke.argmax"(%53) : (tensor<1x64xf32>) -> tensor<1xi32>
    "cke.return"(%54, %53) : (tensor<1xi32>, tensor<1x64xf32>) -> ()
  }) {phase = "decode", sym_name = "decode"} : () -> ()
}) : () -> ()
