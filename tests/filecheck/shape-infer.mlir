// RUN: %ckec opt %s --pass-pipeline=shape-infer | filecheck %s
// shape-infer types every value from the weights' shapes and each op's inference rule:
// the builder leaves results unranked (tensor<*xf32>); rows stay `?` in prefill.

// CHECK-LABEL: "cke.func"
// CHECK: ^bb0(%arg0: tensor<?xi32>, %arg1: i64, %arg2: memref<1x16x8xf32>, %arg3: memref<1x16x8xf32>):
// CHECK: %[[E:.*]] = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 32, 16>} : () -> tensor<32x16xf32>
// CHECK: "cke.embed"(%arg0, %[[E]]) : (tensor<?xi32>, tensor<32x16xf32>) -> tensor<?x16xf32>
// CHECK: "cke.matmul"({{.*}}) : (tensor<?x16xf32>, tensor<8x16xf32>) -> tensor<?x8xf32>
// CHECK: "cke.last_token"({{.*}}) : (tensor<?x16xf32>) -> tensor<1x16xf32>
// CHECK: "cke.argmax"({{.*}}) : (tensor<1x32xf32>) -> tensor<1xi32>
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%ids: tensor<?xi32>, %pos: i64, %kc: memref<1x16x8xf32>, %vc: memref<1x16x8xf32>):
    %emb = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 32, 16>} : () -> tensor<*xf32>
    %x = "cke.embed"(%ids, %emb) : (tensor<?xi32>, tensor<*xf32>) -> tensor<*xf32>
    %wk = "cke.weight"() {name = "blk.0.attn_k.weight", shape = array<i64: 8, 16>} : () -> tensor<*xf32>
    %k = "cke.matmul"(%x, %wk) : (tensor<*xf32>, tensor<*xf32>) -> tensor<*xf32>
    %last = "cke.last_token"(%x) : (tensor<*xf32>) -> tensor<*xf32>
    %logits = "cke.matmul"(%last, %emb) : (tensor<*xf32>, tensor<*xf32>) -> tensor<*xf32>
    %tok = "cke.argmax"(%logits) : (tensor<*xf32>) -> tensor<1xi32>
    "cke.return"(%tok, %logits) : (tensor<1xi32>, tensor<*xf32>) -> ()
  }) {max_tokens = 4 : i64, phase = "prefill", sym_name = "prefill"} : () -> ()
}) : () -> ()
