// RUN: %ckec opt %s --pass-pipeline=lower-llvm --emit=llvm | filecheck %s
// lower-llvm on a program whose communication is all collectives (tensor parallel: an
// all-reduce of partial sums, an all-gather of vocabulary slices) gives it two ways to run.
// The step path: native segments cut at each dist.* op (@cke_decode_r0_s0, _s1, ...), the
// runtime running the collectives from Python between them.  And the fused entry,
// @cke_decode_r0_fused: the whole program in one native call (local ranks run a token with
// it), the collectives spoken in native code over the local transport's channels, through
// the comm block in ctx slot 7.  It is compiled without optimization (optnone): it only
// calls kernels, and O3 on a whole model's entry is superlinear.
//
// Each collective is one step of the comm block's records (step 0, step 1): one thread
// stamps its start (field 0), sends this rank's buffer to every other member and awaits
// theirs (the tag word: 9 all-reduce, 10 all-gather); after a barrier every thread reads
// the peer's message in place (cke_comm_data), then one thread hands the slot back
// (consume) and records bytes sent (field 2), received (3) and the end (1).
//
// The step path (a segment never holds a collective):
// CHECK-LABEL: define dso_local void @cke_decode_r0_s0(ptr %ctx, i32 %tid, i32 %nth)
// CHECK-NOT: cke_comm_
// CHECK: ret void
// CHECK-LABEL: define dso_local void @cke_decode_r0_s1(
// CHECK-NOT: cke_comm_
// CHECK: ret void
//
// CHECK-LABEL: define dso_local void @cke_decode_r0_fused(ptr %ctx, i32 %tid, i32 %nth) nounwind noinline optnone
// CHECK: call i64 @cke_begin(
// The arena is ctx slot 0, its buffers at their plan-memory offsets.
// CHECK: %[[SLOT0:p[.0-9]+]] = getelementptr inbounds i64, ptr %ctx, i64 0
// CHECK-NEXT: %[[ARENA:ld[.0-9]+]] = load ptr, ptr %[[SLOT0]]
// CHECK: %[[A:buf[.0-9]+]] = getelementptr inbounds i8, ptr %[[ARENA]], i64 0
// CHECK: %[[S:buf[.0-9]+]] = getelementptr inbounds i8, ptr %[[ARENA]], i64 128
// CHECK: %[[L:buf[.0-9]+]] = getelementptr inbounds i8, ptr %[[ARENA]], i64 256
// CHECK: %[[G:buf[.0-9]+]] = getelementptr inbounds i8, ptr %[[ARENA]], i64 384
// CHECK: call void @embed_f32_v10_d24(
// CHECK: call void @cke_barrier(
//
// The all-reduce (step 0): 96 bytes to rank 1, then the sum in group order, rank 0's first.
// CHECK: getelementptr inbounds i64, ptr %ctx, i64 7
// CHECK: call void @cke_comm_record(ptr %{{.*}}, i64 0, i64 0, i64 -1)
// CHECK: call void @cke_comm_send(ptr %{{.*}}, i64 1, ptr %[[A]], i64 %{{.*}}, i64 0, i64 9, i64 0)
// CHECK-NEXT: getelementptr inbounds i64, ptr %ctx, i64 7
// CHECK-NEXT: load ptr
// CHECK-NEXT: call void @cke_comm_await(ptr %{{.*}}, i64 1, i64 %{{.*}}, i64 9, i64 0)
// CHECK: call void @cke_barrier(
// CHECK: %[[PEER:c[.0-9]+]] = call ptr @cke_comm_data(ptr %{{.*}}, i64 1)
// CHECK: call void @add_f32_d24{{.*}}(ptr %[[A]], ptr %[[PEER]], ptr %[[S]],
// CHECK: call void @cke_barrier(
// CHECK: call void @cke_comm_consume(ptr %{{.*}}, i64 1)
// CHECK: call void @cke_comm_record(ptr %{{.*}}, i64 0, i64 2, i64 %{{.*}})
// CHECK: call void @cke_comm_record(ptr %{{.*}}, i64 0, i64 3, i64 %{{.*}})
// CHECK: call void @cke_comm_record(ptr %{{.*}}, i64 0, i64 1, i64 -1)
// CHECK: call void @cke_barrier(
//
// The LM head's slice, then the all-gather (step 1): 48 bytes each way, copied out in
// group order (this rank's slice first, rank 1's after it).
// CHECK: call void @matmul_f32_n12_k24{{.*}}(ptr %[[S]], ptr %{{.*}}, ptr %[[L]],
// CHECK: call void @cke_comm_record(ptr %{{.*}}, i64 1, i64 0, i64 -1)
// CHECK: call void @cke_comm_send(ptr %{{.*}}, i64 1, ptr %[[L]], i64 48, i64 0, i64 10, i64 1)
// CHECK: call void @cke_comm_await(ptr %{{.*}}, i64 1, i64 %{{.*}}, i64 10, i64 1)
// CHECK: %[[SLICE:c[.0-9]+]] = call ptr @cke_comm_data(ptr %{{.*}}, i64 1)
// CHECK: %[[AT0:p[.0-9]+]] = getelementptr inbounds float, ptr %[[G]], i64 0
// CHECK-NEXT: call void @llvm.memcpy.p0.p0.i64(ptr %[[AT0]], ptr %[[L]], i64 48, i1 false)
// CHECK-NEXT: %[[AT12:p[.0-9]+]] = getelementptr inbounds float, ptr %[[G]], i64 12
// CHECK-NEXT: call void @llvm.memcpy.p0.p0.i64(ptr %[[AT12]], ptr %[[SLICE]], i64 48, i1 false)
// CHECK: call void @cke_comm_consume(ptr %{{.*}}, i64 1)
// CHECK: call void @cke_comm_record(ptr %{{.*}}, i64 1, i64 1, i64 -1)
// CHECK: ret void
//
// Rank 1 speaks to rank 0 and puts rank 0's slice first.
// CHECK-LABEL: define dso_local void @cke_decode_r1_fused(
// CHECK: call void @cke_comm_send(ptr %{{.*}}, i64 0, ptr %{{.*}}, i64 %{{.*}}, i64 0, i64 9, i64 0)
// CHECK: %[[FIRST:c[.0-9]+]] = call ptr @cke_comm_data(ptr %{{.*}}, i64 0)
// CHECK: %[[SLICE0:c[.0-9]+]] = call ptr @cke_comm_data(ptr %{{.*}}, i64 0)
// CHECK: call void @llvm.memcpy.p0.p0.i64(ptr %{{.*}}, ptr %[[SLICE0]], i64 48, i1 false)
// CHECK-NEXT: getelementptr inbounds float, ptr %{{.*}}, i64 12
// CHECK-NEXT: call void @llvm.memcpy.p0.p0.i64(ptr %{{.*}}, ptr %{{.*}}, i64 48, i1 false)
// CHECK: ret void
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%ids: tensor<1xi32>, %pos: i64, %kc: memref<1x16x8xf32>, %vc: memref<1x16x8xf32>):
    "mem.arena"() {alignment = 64 : i64, buffers = 4 : i64, bytes = 512 : i64} : () -> ()
    %t = "cke.weight"() {name = "t", shape = array<i64: 10, 24>} : () -> tensor<10x24xf32>
    %a = "cke.embed"(%ids, %t) {offset = 0 : i64} : (tensor<1xi32>, tensor<10x24xf32>) -> tensor<1x24xf32>
    %s = "dist.allreduce"(%a) {bytes = 96 : i64, group = array<i64: 0, 1>, offset = 128 : i64} : (tensor<1x24xf32>) -> tensor<1x24xf32>
    %h = "cke.weight"() {name = "h", shape = array<i64: 12, 24>, shard = array<i64: 0, 12, 0, 24>} : () -> tensor<12x24xf32>
    %l = "cke.matmul"(%s, %h) {offset = 256 : i64, tp = "vocab", vocab_bounds = array<i64: 0, 12, 24>, vocab_slice = array<i64: 0, 12, 24>} : (tensor<1x24xf32>, tensor<12x24xf32>) -> tensor<1x12xf32>
    %g = "dist.allgather"(%l) {axis = 1 : i64, bytes = 48 : i64, group = array<i64: 0, 1>, offset = 384 : i64, sizes = array<i64: 12, 12>} : (tensor<1x12xf32>) -> tensor<1x24xf32>
    "cke.return"(%g) : (tensor<1x24xf32>) -> ()
  }) {arena_bytes = 512 : i64, max_tokens = 1 : i64, phase = "decode", rank = 0 : i64, sym_name = "decode_r0"} : () -> ()
  "cke.func"() ({
  ^bb0(%ids: tensor<1xi32>, %pos: i64, %kc: memref<1x16x8xf32>, %vc: memref<1x16x8xf32>):
    "mem.arena"() {alignment = 64 : i64, buffers = 4 : i64, bytes = 512 : i64} : () -> ()
    %t = "cke.weight"() {name = "t", shape = array<i64: 10, 24>} : () -> tensor<10x24xf32>
    %a = "cke.embed"(%ids, %t) {offset = 0 : i64} : (tensor<1xi32>, tensor<10x24xf32>) -> tensor<1x24xf32>
    %s = "dist.allreduce"(%a) {bytes = 96 : i64, group = array<i64: 0, 1>, offset = 128 : i64} : (tensor<1x24xf32>) -> tensor<1x24xf32>
    %h = "cke.weight"() {name = "h", shape = array<i64: 12, 24>, shard = array<i64: 12, 24, 0, 24>} : () -> tensor<12x24xf32>
    %l = "cke.matmul"(%s, %h) {offset = 256 : i64, tp = "vocab", vocab_bounds = array<i64: 0, 12, 24>, vocab_slice = array<i64: 12, 24, 24>} : (tensor<1x24xf32>, tensor<12x24xf32>) -> tensor<1x12xf32>
    %g = "dist.allgather"(%l) {axis = 1 : i64, bytes = 48 : i64, group = array<i64: 0, 1>, offset = 384 : i64, sizes = array<i64: 12, 12>} : (tensor<1x12xf32>) -> tensor<1x24xf32>
    "cke.return"(%g) : (tensor<1x24xf32>) -> ()
  }) {arena_bytes = 512 : i64, max_tokens = 1 : i64, phase = "decode", rank = 1 : i64, sym_name = "decode_r1"} : () -> ()
}) : () -> ()
