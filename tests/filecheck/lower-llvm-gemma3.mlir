// RUN: %ckec opt %s --pass-pipeline=shape-infer,plan-memory,lower-llvm --emit=llvm | filecheck %s
// lower-llvm on the ops gemma3 adds (the program of gemma3-ops.mlir):
// - the scaled embedding: the gather, a barrier, then `scale` over the gathered rows in place;
// - the per-head RMSNorm of Q (2 heads) and K (1 head): the row kernel over rows of one head
//   (8 wide), called on rows x heads of them, with the one head's gains;
// - sliding-window attention: the split-by-keys kernel of window 4 (`_w4`: each row's items
//   start at its position + 1 - 4), then the usual combine;
// - the GELU gate: an elementwise kernel like SiLU's.
//
// CHECK-LABEL: define dso_local void @cke_prefill(ptr %ctx, i32 %tid, i32 %nth)
// CHECK: %[[N:ld[.0-9]+]] = load i64, ptr %{{p[.0-9]+}}
// CHECK: call void @embed_f32_v32_d16(ptr %{{[a-z.0-9]+}}, ptr %{{[a-z.0-9]+}}, ptr %[[X:buf[.0-9]+]],
// CHECK: call void @cke_barrier(
// CHECK: call void @scale_f32_d16_sx4010000000000000_{{v[0-9]+}}(ptr %[[X]], ptr %[[X]], i64 %[[N]],
// CHECK: %[[QROWS:mul[.0-9]+]] = mul i64 %[[N]], 2
// CHECK: call void @rmsnorm_f32_d8_{{[a-zA-Z0-9_]+}}(ptr %{{buf[.0-9]+}}, ptr %{{ld[.0-9]+}}, ptr %{{buf[.0-9]+}}, i64 %[[QROWS]],
// CHECK: %[[KROWS:mul[.0-9]+]] = mul i64 %[[N]], 1
// CHECK: call void @rmsnorm_f32_d8_{{[a-zA-Z0-9_]+}}(ptr %{{buf[.0-9]+}}, ptr %{{ld[.0-9]+}}, ptr %{{buf[.0-9]+}}, i64 %[[KROWS]],
// CHECK: call void @attention_parts_f32_h2_kv1_d8_c16_{{v[0-9]+}}_w4(
// CHECK: call void @attention_combine_f32_h2_d8_{{v[0-9]+}}(
// CHECK: call void @gelu_mul_f32_d24_{{v[0-9]+}}(
// CHECK: ret void
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%ids: tensor<?xi32>, %pos: i64, %kc: memref<1x16x8xf32>, %vc: memref<1x16x8xf32>):
    %emb = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 32, 16>} : () -> tensor<*xf32>
    %x = "cke.embed"(%ids, %emb) {scale = 4.0 : f64} : (tensor<?xi32>, tensor<*xf32>) -> tensor<*xf32>
    %wq = "cke.weight"() {name = "blk.0.attn_q.weight", shape = array<i64: 16, 16>} : () -> tensor<*xf32>
    %q0 = "cke.matmul"(%x, %wq) : (tensor<*xf32>, tensor<*xf32>) -> tensor<*xf32>
    %gq = "cke.weight"() {name = "blk.0.attn_q_norm.weight", shape = array<i64: 8>} : () -> tensor<*xf32>
    %q1 = "cke.rmsnorm"(%q0, %gq) {eps = 1.0e-6 : f64, head_dim = 8 : i64} : (tensor<*xf32>, tensor<*xf32>) -> tensor<*xf32>
    %q = "cke.rope"(%q1, %pos) {head_dim = 8 : i64, style = "halves", theta = 1.0e4 : f64} : (tensor<*xf32>, i64) -> tensor<*xf32>
    %wk = "cke.weight"() {name = "blk.0.attn_k.weight", shape = array<i64: 8, 16>} : () -> tensor<*xf32>
    %k0 = "cke.matmul"(%x, %wk) : (tensor<*xf32>, tensor<*xf32>) -> tensor<*xf32>
    %gk = "cke.weight"() {name = "blk.0.attn_k_norm.weight", shape = array<i64: 8>} : () -> tensor<*xf32>
    %k1 = "cke.rmsnorm"(%k0, %gk) {eps = 1.0e-6 : f64, head_dim = 8 : i64} : (tensor<*xf32>, tensor<*xf32>) -> tensor<*xf32>
    %k = "cke.rope"(%k1, %pos) {head_dim = 8 : i64, style = "halves", theta = 1.0e4 : f64} : (tensor<*xf32>, i64) -> tensor<*xf32>
    %wv = "cke.weight"() {name = "blk.0.attn_v.weight", shape = array<i64: 8, 16>} : () -> tensor<*xf32>
    %v = "cke.matmul"(%x, %wv) : (tensor<*xf32>, tensor<*xf32>) -> tensor<*xf32>
    %a = "cke.attention"(%q, %k, %v, %kc, %vc, %pos) {head_dim = 8 : i64, heads = 2 : i64, kv_heads = 1 : i64, layer = 0 : i64, window = 4 : i64} : (tensor<*xf32>, tensor<*xf32>, tensor<*xf32>, memref<1x16x8xf32>, memref<1x16x8xf32>, i64) -> tensor<*xf32>
    %wg = "cke.weight"() {name = "blk.0.ffn_gate.weight", shape = array<i64: 24, 16>} : () -> tensor<*xf32>
    %g = "cke.matmul"(%a, %wg) : (tensor<*xf32>, tensor<*xf32>) -> tensor<*xf32>
    %wu = "cke.weight"() {name = "blk.0.ffn_up.weight", shape = array<i64: 24, 16>} : () -> tensor<*xf32>
    %u = "cke.matmul"(%a, %wu) : (tensor<*xf32>, tensor<*xf32>) -> tensor<*xf32>
    %h = "cke.gelu_mul"(%g, %u) : (tensor<*xf32>, tensor<*xf32>) -> tensor<*xf32>
    %wd = "cke.weight"() {name = "blk.0.ffn_down.weight", shape = array<i64: 16, 24>} : () -> tensor<*xf32>
    %y = "cke.matmul"(%h, %wd) : (tensor<*xf32>, tensor<*xf32>) -> tensor<*xf32>
    %last = "cke.last_token"(%y) : (tensor<*xf32>) -> tensor<*xf32>
    %logits = "cke.matmul"(%last, %emb) : (tensor<*xf32>, tensor<*xf32>) -> tensor<*xf32>
    %tok = "cke.argmax"(%logits) : (tensor<*xf32>) -> tensor<1xi32>
    "cke.return"(%tok, %logits) : (tensor<1xi32>, tensor<*xf32>) -> ()
  }) {max_tokens = 16 : i64, phase = "prefill", sym_name = "prefill"} : () -> ()
}) : () -> ()
