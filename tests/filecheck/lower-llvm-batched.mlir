// RUN: %ckec %S/Inputs/batch4.cke --emit=llvm --phase decode | filecheck %s
// lower-llvm on a batched decode program (`batch 4`, Inputs/batch4.cke; its IR is in
// batch-decode.mlir): one entry for a step of up to 4 rows, each the next token of its own
// sequence.  Past the fixed ctx slots (arena 0, n 1, pos 2, barrier 3, ids 4, caches 5 and
// 6, comm 7) come the rows' positions (slot 8, i64 each) and sequence slots (slot 9, i32
// each); the weights follow.  The KV caches are slot-major (4 x L x C x KVD): a layer's
// pointer is slot 0's, and the kernels add slots[t] x L x C x KVD floats for row t.
//
// Every kernel is the per-row one, so that each row computes the bits its sequence's
// one-row decode computes: rowwise matmuls (`_rw`: rows share each weight tile but are
// summed in the one-row order), rope at positions[t], the KV store and attention in each
// row's slot (split by keys as a one-row call at the row's position splits it), an argmax
// per row.
//
// CHECK-LABEL: define dso_local void @cke_decode(ptr %ctx, i32 %tid, i32 %nth)
// CHECK: %[[KS:p[.0-9]+]] = getelementptr inbounds i64, ptr %ctx, i64 5
// CHECK-NEXT: %[[KC:ld[.0-9]+]] = load ptr, ptr %[[KS]]
// CHECK: %[[VS:p[.0-9]+]] = getelementptr inbounds i64, ptr %ctx, i64 6
// CHECK-NEXT: %[[VC:ld[.0-9]+]] = load ptr, ptr %[[VS]]
// CHECK-NEXT: %[[PS:p[.0-9]+]] = getelementptr inbounds i64, ptr %ctx, i64 8
// CHECK-NEXT: %[[POS:ld[.0-9]+]] = load ptr, ptr %[[PS]]
// CHECK-NEXT: %[[SS:p[.0-9]+]] = getelementptr inbounds i64, ptr %ctx, i64 9
// CHECK-NEXT: %[[SLOTS:ld[.0-9]+]] = load ptr, ptr %[[SS]]
// CHECK-NEXT: getelementptr inbounds i64, ptr %ctx, i64 10
//
// The q projection, then rope with the positions between its input and its output:
// CHECK: call void @qmatmul_q8_0_n64_k64_t32_rw_{{vnni|v[0-9]+}}(ptr %[[H:buf[.0-9]+]], ptr %{{ld[.0-9]+}}, ptr %[[Q0:buf[.0-9]+]],
// CHECK: call void @rope_f32_h2_d32_halves_{{.*}}_rows(ptr %[[Q0]], ptr %[[POS]], ptr %[[Q:buf[.0-9]+]],
//
// Layer 0 of both caches, then the store and attention of each row in its slot:
// CHECK: %[[KL:layer[.0-9]+]] = getelementptr inbounds i8, ptr %[[KC]], i64 0
// CHECK-NEXT: %[[VL:layer[.0-9]+]] = getelementptr inbounds i8, ptr %[[VC]], i64 0
// CHECK: call void @kv_store_rows_f32_d32_l1_c16(ptr %{{buf[.0-9]+}}, ptr %{{buf[.0-9]+}}, ptr %[[POS]], ptr %[[SLOTS]], ptr %[[KL]], ptr %[[VL]],
// CHECK: call void @attention_rows_parts_f32_h2_kv1_d32_l1_c16_v{{[0-9]+}}(ptr %[[Q]], ptr %[[KL]], ptr %[[VL]], ptr %[[POS]], ptr %[[SLOTS]], ptr %[[PARTIALS:scratch[.0-9]+]], ptr %[[A:buf[.0-9]+]],
// CHECK: call void @attention_rows_combine_f32_h2_d32_v{{[0-9]+}}(ptr %[[POS]], ptr %[[PARTIALS]], ptr %[[A]],
// CHECK: call void @qmatmul_q8_0_n64_k64_t32_c32_rw_{{vnni|v[0-9]+}}(ptr %[[A]],
//
// One id a row:
// CHECK: call void @argmax_rows_f32_v64_w{{[0-9]+}}(
// CHECK-NOT: call void @argmax_f32
// CHECK: ret void
