// RUN: %ckec opt %s --spec %S/Inputs/pair.cke --pass-pipeline=insert-collectives | filecheck %s
// insert-collectives adds an all-reduce after every partial-sum matmul and an all-gather
// after the vocabulary-split LM head, each with its group and byte count (prefill rows at
// max_tokens = 16: 16 x 64 x 4 = 4096 bytes); the pipeline's send/recv pair is checked to
// match (the input is place's output for Inputs/pair.cke).
// CHECK: "cke.func"
// CHECK: %[[P:.*]] = "cke.matmul"{{.*}}tp = "partial"
// CHECK-NEXT: %[[R:.*]] = "dist.allreduce"(%[[P]]) {bytes = 4096 : i64, group = array<i64: 0, 1>} : (tensor<?x64xf32>) -> tensor<?x64xf32>
// CHECK-NEXT: "cke.add"(%{{.*}}, %[[R]])
// CHECK: %[[V:.*]] = "cke.matmul"{{.*}}tp = "vocab"
// CHECK-NEXT: %[[G:.*]] = "dist.allgather"(%[[V]]) {axis = 1 : i64, bytes = 128 : i64, group = array<i64: 0, 1>, sizes = array<i64: 32, 32>} : (tensor<1x32xf32>) -> tensor<1x64xf32>
// CHECK-NEXT: "cke.argmax"(%[[G]])
// CHECK: sym_name = "prefill_r1"
// The pipeline stages need no collective.
// CHECK-NOT: dist.all
// CHECK: sym_name = "decode_r0"
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%arg12: tensor<?xi32>, %arg13: i64, %arg14: memref<2x16x32xf32>, %arg15: memref<2x16x32xf32>):
    %112 = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %113 = "cke.embed"(%arg12, %112) : (tensor<?xi32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %114 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %115 = "cke.rmsnorm"(%113, %114) {eps = 1.000000e-05 : f64, layer = 0 : i64} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %116 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_q.weight", shape = array<i64: 32, 64>, shard = array<i64: 0, 32, 0, 64>} : () -> tensor<32x64xf32>
    %117 = "cke.matmul"(%115, %116) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %118 = "cke.rope"(%117, %arg13) {head_dim = 32 : i64, layer = 0 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<?x32xf32>, i64) -> tensor<?x32xf32>
    %119 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_k.weight", shape = array<i64: 32, 64>, shard = array<i64: 0, 32, 0, 64>} : () -> tensor<32x64xf32>
    %120 = "cke.matmul"(%115, %119) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %121 = "cke.rope"(%120, %arg13) {head_dim = 32 : i64, layer = 0 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<?x32xf32>, i64) -> tensor<?x32xf32>
    %122 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_v.weight", shape = array<i64: 32, 64>, shard = array<i64: 0, 32, 0, 64>} : () -> tensor<32x64xf32>
    %123 = "cke.matmul"(%115, %122) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %124 = "cke.attention"(%118, %121, %123, %arg14, %arg15, %arg13) {head_dim = 32 : i64, heads = 1 : i64, kv_heads = 1 : i64, layer = 0 : i64} : (tensor<?x32xf32>, tensor<?x32xf32>, tensor<?x32xf32>, memref<2x16x32xf32>, memref<2x16x32xf32>, i64) -> tensor<?x32xf32>
    %125 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_output.weight", shape = array<i64: 64, 32>, shard = array<i64: 0, 64, 0, 32>} : () -> tensor<64x32xf32>
    %126 = "cke.matmul"(%124, %125) {layer = 0 : i64, tp = "partial"} : (tensor<?x32xf32>, tensor<64x32xf32>) -> tensor<?x64xf32>
    %127 = "cke.add"(%113, %126) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %128 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %129 = "cke.rmsnorm"(%127, %128) {eps = 1.000000e-05 : f64, layer = 0 : i64} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %130 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_gate.weight", shape = array<i64: 32, 64>, shard = array<i64: 0, 32, 0, 64>} : () -> tensor<32x64xf32>
    %131 = "cke.matmul"(%129, %130) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %132 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_up.weight", shape = array<i64: 32, 64>, shard = array<i64: 0, 32, 0, 64>} : () -> tensor<32x64xf32>
    %133 = "cke.matmul"(%129, %132) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %134 = "cke.silu_mul"(%131, %133) {layer = 0 : i64} : (tensor<?x32xf32>, tensor<?x32xf32>) -> tensor<?x32xf32>
    %135 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_down.weight", shape = array<i64: 64, 32>, shard = array<i64: 0, 64, 0, 32>} : () -> tensor<64x32xf32>
    %136 = "cke.matmul"(%134, %135) {layer = 0 : i64, tp = "partial"} : (tensor<?x32xf32>, tensor<64x32xf32>) -> tensor<?x64xf32>
    %137 = "cke.add"(%127, %136) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %138 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %139 = "cke.rmsnorm"(%137, %138) {eps = 1.000000e-05 : f64, layer = 1 : i64} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %140 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_q.weight", shape = array<i64: 32, 64>, shard = array<i64: 0, 32, 0, 64>} : () -> tensor<32x64xf32>
    %141 = "cke.matmul"(%139, %140) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %142 = "cke.rope"(%141, %arg13) {head_dim = 32 : i64, layer = 1 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<?x32xf32>, i64) -> tensor<?x32xf32>
    %143 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_k.weight", shape = array<i64: 32, 64>, shard = array<i64: 0, 32, 0, 64>} : () -> tensor<32x64xf32>
    %144 = "cke.matmul"(%139, %143) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %145 = "cke.rope"(%144, %arg13) {head_dim = 32 : i64, layer = 1 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<?x32xf32>, i64) -> tensor<?x32xf32>
    %146 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_v.weight", shape = array<i64: 32, 64>, shard = array<i64: 0, 32, 0, 64>} : () -> tensor<32x64xf32>
    %147 = "cke.matmul"(%139, %146) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %148 = "cke.attention"(%142, %145, %147, %arg14, %arg15, %arg13) {head_dim = 32 : i64, heads = 1 : i64, kv_heads = 1 : i64, layer = 1 : i64} : (tensor<?x32xf32>, tensor<?x32xf32>, tensor<?x32xf32>, memref<2x16x32xf32>, memref<2x16x32xf32>, i64) -> tensor<?x32xf32>
    %149 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_output.weight", shape = array<i64: 64, 32>, shard = array<i64: 0, 64, 0, 32>} : () -> tensor<64x32xf32>
    %150 = "cke.matmul"(%148, %149) {layer = 1 : i64, tp = "partial"} : (tensor<?x32xf32>, tensor<64x32xf32>) -> tensor<?x64xf32>
    %151 = "cke.add"(%137, %150) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %152 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %153 = "cke.rmsnorm"(%151, %152) {eps = 1.000000e-05 : f64, layer = 1 : i64} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %154 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_gate.weight", shape = array<i64: 32, 64>, shard = array<i64: 0, 32, 0, 64>} : () -> tensor<32x64xf32>
    %155 = "cke.matmul"(%153, %154) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %156 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_up.weight", shape = array<i64: 32, 64>, shard = array<i64: 0, 32, 0, 64>} : () -> tensor<32x64xf32>
    %157 = "cke.matmul"(%153, %156) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %158 = "cke.silu_mul"(%155, %157) {layer = 1 : i64} : (tensor<?x32xf32>, tensor<?x32xf32>) -> tensor<?x32xf32>
    %159 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_down.weight", shape = array<i64: 64, 32>, shard = array<i64: 0, 64, 0, 32>} : () -> tensor<64x32xf32>
    %160 = "cke.matmul"(%158, %159) {layer = 1 : i64, tp = "partial"} : (tensor<?x32xf32>, tensor<64x32xf32>) -> tensor<?x64xf32>
    %161 = "cke.add"(%151, %160) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %162 = "cke.last_token"(%161) : (tensor<?x64xf32>) -> tensor<1x64xf32>
    %163 = "cke.weight"() {name = "output_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %164 = "cke.rmsnorm"(%162, %163) {eps = 1.000000e-05 : f64} : (tensor<1x64xf32>, tensor<64xf32>) -> tensor<1x64xf32>
    %165 = "cke.weight"() {name = "output.weight", shape = array<i64: 32, 64>, shard = array<i64: 0, 32, 0, 64>} : () -> tensor<32x64xf32>
    %166 = "cke.matmul"(%164, %165) {tp = "vocab", vocab_bounds = array<i64: 0, 32, 64>, vocab_slice = array<i64: 0, 32, 64>} : (tensor<1x64xf32>, tensor<32x64xf32>) -> tensor<1x32xf32>
    %167 = "cke.argmax"(%166) : (tensor<1x32xf32>) -> tensor<1xi32>
    "cke.return"(%167, %166) : (tensor<1xi32>, tensor<1x32xf32>) -> ()
  }) {group = array<i64: 0, 1>, layers = array<i64: 0, 1>, max_tokens = 16 : i64, phase = "prefill", rank = 0 : i64, stage = 0 : i64, sym_name = "prefill_r0"} : () -> ()
  "cke.func"() ({
  ^bb0(%arg8: tensor<?xi32>, %arg9: i64, %arg10: memref<2x16x32xf32>, %arg11: memref<2x16x32xf32>):
    %56 = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %57 = "cke.embed"(%arg8, %56) : (tensor<?xi32>, tensor<64x64xf32>) -> tensor<?x64xf32>
    %58 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %59 = "cke.rmsnorm"(%57, %58) {eps = 1.000000e-05 : f64, layer = 0 : i64} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %60 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_q.weight", shape = array<i64: 32, 64>, shard = array<i64: 32, 64, 0, 64>} : () -> tensor<32x64xf32>
    %61 = "cke.matmul"(%59, %60) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %62 = "cke.rope"(%61, %arg9) {head_dim = 32 : i64, layer = 0 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<?x32xf32>, i64) -> tensor<?x32xf32>
    %63 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_k.weight", shape = array<i64: 32, 64>, shard = array<i64: 32, 64, 0, 64>} : () -> tensor<32x64xf32>
    %64 = "cke.matmul"(%59, %63) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %65 = "cke.rope"(%64, %arg9) {head_dim = 32 : i64, layer = 0 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<?x32xf32>, i64) -> tensor<?x32xf32>
    %66 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_v.weight", shape = array<i64: 32, 64>, shard = array<i64: 32, 64, 0, 64>} : () -> tensor<32x64xf32>
    %67 = "cke.matmul"(%59, %66) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %68 = "cke.attention"(%62, %65, %67, %arg10, %arg11, %arg9) {head_dim = 32 : i64, heads = 1 : i64, kv_heads = 1 : i64, layer = 0 : i64} : (tensor<?x32xf32>, tensor<?x32xf32>, tensor<?x32xf32>, memref<2x16x32xf32>, memref<2x16x32xf32>, i64) -> tensor<?x32xf32>
    %69 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_output.weight", shape = array<i64: 64, 32>, shard = array<i64: 0, 64, 32, 64>} : () -> tensor<64x32xf32>
    %70 = "cke.matmul"(%68, %69) {layer = 0 : i64, tp = "partial"} : (tensor<?x32xf32>, tensor<64x32xf32>) -> tensor<?x64xf32>
    %71 = "cke.add"(%57, %70) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %72 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %73 = "cke.rmsnorm"(%71, %72) {eps = 1.000000e-05 : f64, layer = 0 : i64} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %74 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_gate.weight", shape = array<i64: 32, 64>, shard = array<i64: 32, 64, 0, 64>} : () -> tensor<32x64xf32>
    %75 = "cke.matmul"(%73, %74) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %76 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_up.weight", shape = array<i64: 32, 64>, shard = array<i64: 32, 64, 0, 64>} : () -> tensor<32x64xf32>
    %77 = "cke.matmul"(%73, %76) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %78 = "cke.silu_mul"(%75, %77) {layer = 0 : i64} : (tensor<?x32xf32>, tensor<?x32xf32>) -> tensor<?x32xf32>
    %79 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_down.weight", shape = array<i64: 64, 32>, shard = array<i64: 0, 64, 32, 64>} : () -> tensor<64x32xf32>
    %80 = "cke.matmul"(%78, %79) {layer = 0 : i64, tp = "partial"} : (tensor<?x32xf32>, tensor<64x32xf32>) -> tensor<?x64xf32>
    %81 = "cke.add"(%71, %80) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %82 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %83 = "cke.rmsnorm"(%81, %82) {eps = 1.000000e-05 : f64, layer = 1 : i64} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %84 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_q.weight", shape = array<i64: 32, 64>, shard = array<i64: 32, 64, 0, 64>} : () -> tensor<32x64xf32>
    %85 = "cke.matmul"(%83, %84) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %86 = "cke.rope"(%85, %arg9) {head_dim = 32 : i64, layer = 1 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<?x32xf32>, i64) -> tensor<?x32xf32>
    %87 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_k.weight", shape = array<i64: 32, 64>, shard = array<i64: 32, 64, 0, 64>} : () -> tensor<32x64xf32>
    %88 = "cke.matmul"(%83, %87) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %89 = "cke.rope"(%88, %arg9) {head_dim = 32 : i64, layer = 1 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<?x32xf32>, i64) -> tensor<?x32xf32>
    %90 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_v.weight", shape = array<i64: 32, 64>, shard = array<i64: 32, 64, 0, 64>} : () -> tensor<32x64xf32>
    %91 = "cke.matmul"(%83, %90) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %92 = "cke.attention"(%86, %89, %91, %arg10, %arg11, %arg9) {head_dim = 32 : i64, heads = 1 : i64, kv_heads = 1 : i64, layer = 1 : i64} : (tensor<?x32xf32>, tensor<?x32xf32>, tensor<?x32xf32>, memref<2x16x32xf32>, memref<2x16x32xf32>, i64) -> tensor<?x32xf32>
    %93 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_output.weight", shape = array<i64: 64, 32>, shard = array<i64: 0, 64, 32, 64>} : () -> tensor<64x32xf32>
    %94 = "cke.matmul"(%92, %93) {layer = 1 : i64, tp = "partial"} : (tensor<?x32xf32>, tensor<64x32xf32>) -> tensor<?x64xf32>
    %95 = "cke.add"(%81, %94) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %96 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %97 = "cke.rmsnorm"(%95, %96) {eps = 1.000000e-05 : f64, layer = 1 : i64} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
    %98 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_gate.weight", shape = array<i64: 32, 64>, shard = array<i64: 32, 64, 0, 64>} : () -> tensor<32x64xf32>
    %99 = "cke.matmul"(%97, %98) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %100 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_up.weight", shape = array<i64: 32, 64>, shard = array<i64: 32, 64, 0, 64>} : () -> tensor<32x64xf32>
    %101 = "cke.matmul"(%97, %100) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
    %102 = "cke.silu_mul"(%99, %101) {layer = 1 : i64} : (tensor<?x32xf32>, tensor<?x32xf32>) -> tensor<?x32xf32>
    %103 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_down.weight", shape = array<i64: 64, 32>, shard = array<i64: 0, 64, 32, 64>} : () -> tensor<64x32xf32>
    %104 = "cke.matmul"(%102, %103) {layer = 1 : i64, tp = "partial"} : (tensor<?x32xf32>, tensor<64x32xf32>) -> tensor<?x64xf32>
    %105 = "cke.add"(%95, %104) {layer = 1 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
    %106 = "cke.last_token"(%105) : (tensor<?x64xf32>) -> tensor<1x64xf32>
    %107 = "cke.weight"() {name = "output_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %108 = "cke.rmsnorm"(%106, %107) {eps = 1.000000e-05 : f64} : (tensor<1x64xf32>, tensor<64xf32>) -> tensor<1x64xf32>
    %109 = "cke.weight"() {name = "output.weight", shape = array<i64: 32, 64>, shard = array<i64: 32, 64, 0, 64>} : () -> tensor<32x64xf32>
    %110 = "cke.matmul"(%108, %109) {tp = "vocab", vocab_bounds = array<i64: 0, 32, 64>, vocab_slice = array<i64: 32, 64, 64>} : (tensor<1x64xf32>, tensor<32x64xf32>) -> tensor<1x32xf32>
    %111 = "cke.argmax"(%110) : (tensor<1x32xf32>) -> tensor<1xi32>
    "cke.return"(%111, %110) : (tensor<1xi32>, tensor<1x32xf32>) -> ()
  }) {group = array<i64: 0, 1>, layers = array<i64: 0, 1>, max_tokens = 16 : i64, phase = "prefill", rank = 1 : i64, stage = 0 : i64, sym_name = "prefill_r1"} : () -> ()
  "cke.func"() ({
  ^bb0(%arg4: tensor<1xi32>, %arg5: i64, %arg6: memref<2x16x64xf32>, %arg7: memref<2x16x64xf32>):
    %30 = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %31 = "cke.embed"(%arg4, %30) : (tensor<1xi32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %32 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %33 = "cke.rmsnorm"(%31, %32) {eps = 1.000000e-05 : f64, layer = 0 : i64} : (tensor<1x64xf32>, tensor<64xf32>) -> tensor<1x64xf32>
    %34 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_q.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %35 = "cke.matmul"(%33, %34) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %36 = "cke.rope"(%35, %arg5) {head_dim = 32 : i64, layer = 0 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<1x64xf32>, i64) -> tensor<1x64xf32>
    %37 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_k.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %38 = "cke.matmul"(%33, %37) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %39 = "cke.rope"(%38, %arg5) {head_dim = 32 : i64, layer = 0 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<1x64xf32>, i64) -> tensor<1x64xf32>
    %40 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_v.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %41 = "cke.matmul"(%33, %40) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %42 = "cke.attention"(%36, %39, %41, %arg6, %arg7, %arg5) {head_dim = 32 : i64, heads = 2 : i64, kv_heads = 2 : i64, layer = 0 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>, tensor<1x64xf32>, memref<2x16x64xf32>, memref<2x16x64xf32>, i64) -> tensor<1x64xf32>
    %43 = "cke.weight"() {layer = 0 : i64, name = "blk.0.attn_output.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %44 = "cke.matmul"(%42, %43) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %45 = "cke.add"(%31, %44) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<1x64xf32>
    %46 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %47 = "cke.rmsnorm"(%45, %46) {eps = 1.000000e-05 : f64, layer = 0 : i64} : (tensor<1x64xf32>, tensor<64xf32>) -> tensor<1x64xf32>
    %48 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_gate.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %49 = "cke.matmul"(%47, %48) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %50 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_up.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %51 = "cke.matmul"(%47, %50) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %52 = "cke.silu_mul"(%49, %51) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<1x64xf32>
    %53 = "cke.weight"() {layer = 0 : i64, name = "blk.0.ffn_down.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %54 = "cke.matmul"(%52, %53) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %55 = "cke.add"(%45, %54) {layer = 0 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<1x64xf32>
    "dist.send"(%55) {bytes = 256 : i64, peer = 1 : i64} : (tensor<1x64xf32>) -> ()
    "cke.return"() : () -> ()
  }) {group = array<i64: 0>, layers = array<i64: 0, 0>, phase = "decode", rank = 0 : i64, stage = 0 : i64, sym_name = "decode_r0"} : () -> ()
  "cke.func"() ({
  ^bb0(%arg0: tensor<1xi32>, %arg1: i64, %arg2: memref<2x16x64xf32>, %arg3: memref<2x16x64xf32>):
    %0 = "dist.recv"() {bytes = 256 : i64, peer = 0 : i64} : () -> tensor<1x64xf32>
    %1 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %2 = "cke.rmsnorm"(%0, %1) {eps = 1.000000e-05 : f64, layer = 1 : i64} : (tensor<1x64xf32>, tensor<64xf32>) -> tensor<1x64xf32>
    %3 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_q.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %4 = "cke.matmul"(%2, %3) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %5 = "cke.rope"(%4, %arg1) {head_dim = 32 : i64, layer = 1 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<1x64xf32>, i64) -> tensor<1x64xf32>
    %6 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_k.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %7 = "cke.matmul"(%2, %6) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %8 = "cke.rope"(%7, %arg1) {head_dim = 32 : i64, layer = 1 : i64, style = "halves", theta = 1.000000e+04 : f64} : (tensor<1x64xf32>, i64) -> tensor<1x64xf32>
    %9 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_v.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %10 = "cke.matmul"(%2, %9) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %11 = "cke.attention"(%5, %8, %10, %arg2, %arg3, %arg1) {head_dim = 32 : i64, heads = 2 : i64, kv_heads = 2 : i64, layer = 1 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>, tensor<1x64xf32>, memref<2x16x64xf32>, memref<2x16x64xf32>, i64) -> tensor<1x64xf32>
    %12 = "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_output.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %13 = "cke.matmul"(%11, %12) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %14 = "cke.add"(%0, %13) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<1x64xf32>
    %15 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %16 = "cke.rmsnorm"(%14, %15) {eps = 1.000000e-05 : f64, layer = 1 : i64} : (tensor<1x64xf32>, tensor<64xf32>) -> tensor<1x64xf32>
    %17 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_gate.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %18 = "cke.matmul"(%16, %17) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %19 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_up.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %20 = "cke.matmul"(%16, %19) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %21 = "cke.silu_mul"(%18, %20) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<1x64xf32>
    %22 = "cke.weight"() {layer = 1 : i64, name = "blk.1.ffn_down.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %23 = "cke.matmul"(%21, %22) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %24 = "cke.add"(%14, %23) {layer = 1 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<1x64xf32>
    %25 = "cke.weight"() {name = "output_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %26 = "cke.rmsnorm"(%24, %25) {eps = 1.000000e-05 : f64} : (tensor<1x64xf32>, tensor<64xf32>) -> tensor<1x64xf32>
    %27 = "cke.weight"() {name = "output.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %28 = "cke.matmul"(%26, %27) : (tensor<1x64xf32>, tensor<64x64xf32>) -> tensor<1x64xf32>
    %29 = "cke.argmax"(%28) : (tensor<1x64xf32>) -> tensor<1xi32>
    "cke.return"(%29, %28) : (tensor<1xi32>, tensor<1x64xf32>) -> ()
  }) {group = array<i64: 1>, layers = array<i64: 1, 1>, phase = "decode", rank = 1 : i64, stage = 1 : i64, sym_name = "decode_r1"} : () -> ()
}) : () -> ()
