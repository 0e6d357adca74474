// RUN: %ckec opt %s --pass-pipeline=lower-llvm --emit=llvm | filecheck %s
// lower-llvm under `quantize transfers q8_0`: a Q8_0 message travels through a staging
// buffer past the func's arena (at arena_bytes, rounded up to 64).  The sending segment
// ends by quantizing the value into it (64 floats -> 2 blocks of 34 bytes); the segment
// after a recv starts by dequantizing it into the value's own buffer, before any use.

// CHECK-LABEL: define dso_local void @cke_decode_r0_s0(ptr %ctx, i32 %tid, i32 %nth)
// CHECK: %[[EMB:buf[.0-9]+]] = getelementptr inbounds i8, ptr %{{.*}}, i64 0
// CHECK: call void @embed_f32_v10_d64(ptr %{{.*}}, ptr %{{.*}}, ptr %[[EMB]],
// CHECK: call void @cke_barrier(
// CHECK: %[[STAGE:stage[.0-9]+]] = getelementptr inbounds i8, ptr %{{.*}}, i64 256
// CHECK: call void @q8_0_quantize_k64(ptr %[[EMB]], ptr %[[STAGE]], i64 1,
// CHECK: call void @cke_barrier(
// CHECK: ret void
//
// CHECK-LABEL: define dso_local void @cke_decode_r1_s0(ptr %ctx, i32 %tid, i32 %nth)
// CHECK: %[[RECV:buf[.0-9]+]] = getelementptr inbounds i8, ptr %{{.*}}, i64 0
// CHECK: %[[IN:stage[.0-9]+]] = getelementptr inbounds i8, ptr %{{.*}}, i64 512
// CHECK: call void @q8_0_dequantize_k64_{{f16c|int}}(ptr %[[IN]], ptr %[[RECV]], i64 1,
// CHECK: call void @cke_barrier(
// CHECK: call void @add_f32_d64{{.*}}(ptr %[[RECV]], ptr %[[RECV]],
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%arg0: tensor<1xi32>, %arg1: i64, %arg2: memref<1x8x64xf32>, %arg3: memref<1x8x64xf32>):
    %0 = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 10, 64>} : () -> tensor<10x64xf32>
    %1 = "cke.embed"(%arg0, %0) {offset = 0 : i64} : (tensor<1xi32>, tensor<10x64xf32>) -> tensor<1x64xf32>
    "dist.send"(%1) {bytes = 68 : i64, format = "q8_0", peer = 1 : i64} : (tensor<1x64xf32>) -> ()
    "cke.return"() : () -> ()
  }) {arena_bytes = 256 : i64, max_tokens = 1 : i64, phase = "decode", rank = 0 : i64, sym_name = "decode_r0"} : () -> ()
  "cke.func"() ({
  ^bb0(%arg0: tensor<1xi32>, %arg1: i64, %arg2: memref<1x8x64xf32>, %arg3: memref<1x8x64xf32>):
    %0 = "dist.recv"() {bytes = 68 : i64, format = "q8_0", offset = 0 : i64, peer = 0 : i64} : () -> tensor<1x64xf32>
    %1 = "cke.add"(%0, %0) {offset = 256 : i64} : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<1x64xf32>
    "cke.return"(%1) : (tensor<1x64xf32>) -> ()
  }) {arena_bytes = 512 : i64, max_tokens = 1 : i64, phase = "decode", rank = 1 : i64, sym_name = "decode_r1"} : () -> ()
}) : () -> ()
