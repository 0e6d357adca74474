// RUN: %ckec opt %s --pass-pipeline=shape-infer,plan-memory | filecheck %s
// The ops gemma3 adds to a llama layer go through shape-infer and plan-memory like the
// others: the scaled embedding (scale = sqrt(hidden)), the per-head RMSNorm of Q and K
// (head_dim: its gains are one head wide, its rows are whole heads), sliding-window
// attention (window: the keys a row sees) and the GELU gate.  Each gets its type and a
// buffer in the arena.

// CHECK-LABEL: "cke.func"
// CHECK: "mem.arena"() {alignment = 64 : i64, buffers = 16 : i64, bytes = {{[0-9]+}} : i64}
// CHECK: "cke.embed"(%arg0, %{{[0-9]+}}) {offset = {{[0-9]+}} : i64, scale = 4.000000e+00 : f64} : (tensor<?xi32>, tensor<32x16xf32>) -> tensor<?x16xf32>
// CHECK: "cke.rmsnorm"(%{{[0-9]+}}, %{{[0-9]+}}) {eps = 9.9999999999999995E-7 : f64, head_dim = 8 : i64, offset = {{[0-9]+}} : i64} : (tensor<?x16xf32>, tensor<8xf32>) -> tensor<?x16xf32>
// CHECK: "cke.rmsnorm"(%{{[0-9]+}}, %{{[0-9]+}}) {eps = 9.9999999999999995E-7 : f64, head_dim = 8 : i64, offset = {{[0-9]+}} : i64} : (tensor<?x8xf32>, tensor<8xf32>) -> tensor<?x8xf32>
// CHECK: "cke.attention"({{.*}}) {head_dim = 8 : i64, heads = 2 : i64, kv_heads = 1 : i64, layer = 0 : i64, offset = {{[0-9]+}} : i64, window = 4 : i64} : (tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, memref<1x16x8xf32>, memref<1x16x8xf32>, i64) -> tensor<?x16xf32>
// CHECK: "cke.gelu_mul"({{.*}}) {offset = {{[0-9]+}} : i64} : (tensor<?x24xf32>, tensor<?x24xf32>) -> tensor<?x24xf32>
// CHECK: "cke.return"
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
