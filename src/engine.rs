//! The GPU forward pass: weights uploaded once in their file formats, and a `Session` that owns
//! one stream's KV cache and streams blocks of tokens through the model under a cache policy.
//!
//! Everything (buffers, bind groups, the list of dispatches) is created in `Session::new`; a
//! block costs a few small buffer writes, one command buffer, one submission and one readback.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytemuck::{Pod, Zeroable};

use crate::cache::{CacheRule, Policy};
use crate::error::{Error, Result};
use crate::gpu::{wtype, Bind, Gpu, GpuBuffer, Kernel, Pipeline, UNIFORM_WINDOW};
use crate::model::{Config, RopeLayout, Weights};
use crate::tensor::{DType, HostTensor, GPU_GROUP};

/// Row groups one matmul invocation computes (shaders/matmul.wgsl, override RG).
const MATMUL_RG: usize = 4;
/// Rows per invocation slice: tensors are split across bindings on multiples of this.
const ROW_CHUNK: usize = GPU_GROUP * MATMUL_RG;
/// Keys per split of a query's attention output where caches are long (attn_out.wgsl); caches
/// of fewer than twice this many slots are not split.
const ATTN_SPLIT: usize = 256;
/// Floats a uniform window holds.
const WINDOW_FLOATS: usize = (UNIFORM_WINDOW / 4) as usize;
/// Most candidates shaders/select.wgsl returns (more means ties: the whole row is read instead).
pub const SELECT_CAP: usize = 256;
/// Most recent tokens the GPU's repetition penalty takes.
pub const SELECT_RECENT: usize = 64;

/// Byte stride of the entries of the tile-index uniform buffer (the dynamic offset alignment).
const TILE_STRIDE: u64 = 256;

/// A weight matrix on the GPU, split by rows into parts that each fit one storage binding.
pub struct GpuMatrix {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    parts: Vec<(GpuBuffer, usize, usize)>, // (buffer, first row, rows)
}

impl GpuMatrix {
    pub fn upload(gpu: &Gpu, t: &HostTensor) -> Result<GpuMatrix> {
        Self::upload_limited(gpu, t, gpu.max_binding())
    }

    /// Upload with an explicit per-part byte limit (tests use a small one to exercise splitting).
    pub fn upload_limited(gpu: &Gpu, t: &HostTensor, max_bytes: u64) -> Result<GpuMatrix> {
        t.check_gpu_shape()?;
        if t.cols > WINDOW_FLOATS {
            return Err(Error::gpu(format!(
                "tensor {}: rows of {} weights; sinkstream's matmul reads at most {WINDOW_FLOATS} inputs per token",
                t.name, t.cols
            )));
        }
        let row_bytes = t.dtype.gpu_row_bytes(t.cols) as u64;
        // Parts hold whole slices of ROW_CHUNK rows, so no invocation straddles two parts.
        let rows_per_part = (max_bytes / row_bytes) as usize / ROW_CHUNK * ROW_CHUNK;
        if rows_per_part == 0 {
            return Err(Error::gpu(format!(
                "tensor {}: {ROW_CHUNK} rows take {} bytes, more than the adapter's storage binding limit of {max_bytes} bytes (max_storage_buffer_binding_size)",
                t.name,
                row_bytes * ROW_CHUNK as u64
            )));
        }
        let mut parts = Vec::new();
        let mut r0 = 0;
        while r0 < t.rows {
            let r1 = (r0 + rows_per_part).min(t.rows);
            let buf = gpu.storage_init(&t.name, &t.gpu_bytes(r0, r1))?;
            parts.push((buf, r0, r1 - r0));
            r0 = r1;
        }
        Ok(GpuMatrix {
            dtype: t.dtype,
            rows: t.rows,
            cols: t.cols,
            parts,
        })
    }

    pub fn part_count(&self) -> usize {
        self.parts.len()
    }

    /// Tokens per matmul tile for prefill: as many as fit one uniform window of inputs (<= 8).
    fn tile_tokens(&self) -> u32 {
        let mut tt = 8;
        while tt > 1 && tt * self.cols > WINDOW_FLOATS {
            tt /= 2;
        }
        tt as u32
    }
}

/// One projection into a shared output: the matrix, its bias, its first output column.
struct Proj {
    m: GpuMatrix,
    bias: Option<GpuBuffer>,
    offset: usize,
}

/// The feed-forward input projections: gate and up interleaved by row group with SwiGLU in the
/// matmul's epilogue, or (when their types differ) two matmuls and a separate SwiGLU kernel.
enum FfnUp {
    Fused(GpuMatrix),
    Split(GpuMatrix, GpuMatrix),
}

struct GpuLayer {
    attn_norm: GpuBuffer,
    qkv: Vec<Proj>,
    wo: GpuMatrix,
    ffn_norm: GpuBuffer,
    up: FfnUp,
    down: GpuMatrix,
}

/// Rows of several same-typed matrices stacked into one (Q, K, V as one projection).
fn stack_rows(name: &str, ts: &[&HostTensor]) -> Option<HostTensor> {
    let first = ts[0];
    if ts
        .iter()
        .any(|t| t.dtype != first.dtype || t.cols != first.cols)
    {
        return None;
    }
    Some(HostTensor {
        name: name.to_string(),
        dtype: first.dtype,
        rows: ts.iter().map(|t| t.rows).sum(),
        cols: first.cols,
        data: ts.iter().flat_map(|t| t.data.iter().copied()).collect(),
    })
}

/// Gate and up interleaved by groups of 8 rows (each padded to a whole group with zero rows):
/// gate group 0, up group 0, gate group 1, ... shaders/matmul.wgsl's SwiGLU epilogue pairs them.
fn interleave_gate_up(name: &str, gate: &HostTensor, up: &HostTensor) -> Option<HostTensor> {
    if gate.dtype != up.dtype || gate.cols != up.cols || gate.rows != up.rows {
        return None;
    }
    let rb = gate.row_bytes();
    let groups = gate.rows.div_ceil(GPU_GROUP);
    let mut data = vec![0u8; groups * 2 * GPU_GROUP * rb];
    for r in 0..gate.rows {
        let (g, lane) = (r / GPU_GROUP, r % GPU_GROUP);
        for (k, t) in [gate, up].iter().enumerate() {
            let at = ((2 * g + k) * GPU_GROUP + lane) * rb;
            data[at..at + rb].copy_from_slice(&t.data[r * rb..(r + 1) * rb]);
        }
    }
    Some(HostTensor {
        name: name.to_string(),
        dtype: gate.dtype,
        rows: groups * 2 * GPU_GROUP,
        cols: gate.cols,
        data,
    })
}

/// Rows per section block of the Q/K/V projection (shaders/rope.wgsl): Q, K and V are each
/// padded to whole blocks.
const QKV_BLOCK: usize = 2 * GPU_GROUP;

/// The upload order of the rows of a Q or K projection (`pairs`) or of V, as the source row of
/// each uploaded row (None: a zero row of padding). Rotation pair pr, numbered head by head, goes
/// to lane pr % 8 of row groups 2 (pr / 8) and 2 (pr / 8) + 1, so that one matmul invocation
/// holds both its rows and rotates them in its epilogue; V keeps its order. Both are padded to
/// whole blocks of QKV_BLOCK rows.
fn qkv_order(rows: usize, head_dim: usize, layout: RopeLayout, pairs: bool) -> Vec<Option<usize>> {
    let mut order = vec![None; rows.next_multiple_of(QKV_BLOCK)];
    if !pairs {
        for (r, o) in order.iter_mut().enumerate().take(rows) {
            *o = Some(r);
        }
        return order;
    }
    let half = head_dim / 2;
    for pr in 0..rows / 2 {
        let (h, p) = (pr / half, pr % half);
        for k in 0..2 {
            let within = match layout {
                RopeLayout::Adjacent => 2 * p + k,
                RopeLayout::Half => p + k * half,
            };
            order[(pr / GPU_GROUP) * QKV_BLOCK + k * GPU_GROUP + pr % GPU_GROUP] =
                Some(h * head_dim + within);
        }
    }
    order
}

/// Rows of `row_bytes` each taken in `order` (zeros for None).
fn reorder_rows(data: &[u8], row_bytes: usize, order: &[Option<usize>]) -> Vec<u8> {
    let mut out = vec![0u8; order.len() * row_bytes];
    for (dst, src) in order.iter().enumerate() {
        if let Some(r) = src {
            out[dst * row_bytes..(dst + 1) * row_bytes]
                .copy_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
        }
    }
    out
}

/// A projection and its bias with rows in `order`.
fn reorder_proj(
    t: &HostTensor,
    bias: &Option<HostTensor>,
    order: &[Option<usize>],
) -> (HostTensor, Option<HostTensor>) {
    let m = HostTensor {
        name: t.name.clone(),
        dtype: t.dtype,
        rows: order.len(),
        cols: t.cols,
        data: reorder_rows(&t.data, t.row_bytes(), order),
    };
    let b = bias.as_ref().map(|b| HostTensor {
        name: b.name.clone(),
        dtype: b.dtype,
        rows: 1,
        cols: order.len(),
        data: reorder_rows(&b.data, 4, order),
    });
    (m, b)
}

/// A model's weights on the GPU, shared by any number of sessions.
pub struct GpuModel {
    pub gpu: Arc<Gpu>,
    pub config: Config,
    embed: GpuMatrix,
    head: Option<GpuMatrix>,
    layers: Vec<GpuLayer>,
    final_norm: GpuBuffer,
    /// Rows of the Q section and of the K and V sections of the Q/K/V projection's output, each
    /// padded to whole blocks (`qkv_order`).
    qkv_rows: (usize, usize),
}

impl GpuModel {
    pub fn new(gpu: Arc<Gpu>, config: &Config, weights: &Weights) -> Result<GpuModel> {
        Self::with_binding_limit(gpu.clone(), config, weights, gpu.max_binding())
    }

    /// Tests pass a small `max_bytes` to exercise the splitting of large tensors.
    pub fn with_binding_limit(
        gpu: Arc<Gpu>,
        config: &Config,
        w: &Weights,
        max_bytes: u64,
    ) -> Result<GpuModel> {
        let c = config;
        if c.head_dim % 8 != 0 || c.head_dim > 256 {
            return Err(Error::gpu(format!(
                "head dimension {}: sinkstream's attention kernels need a multiple of 8 up to 256",
                c.head_dim
            )));
        }
        if c.n_heads / c.n_kv_heads > 8 {
            return Err(Error::gpu(format!(
                "{} query heads per key/value head: sinkstream's attention kernels handle at most 8",
                c.n_heads / c.n_kv_heads
            )));
        }
        let mat = |t: &HostTensor| GpuMatrix::upload_limited(&gpu, t, max_bytes);
        let vec = |t: &HostTensor| gpu.storage_init(&t.name, &t.data);
        let opt = |t: &Option<HostTensor>| t.as_ref().map(vec).transpose();
        let mut layers = Vec::with_capacity(w.layers.len());
        let (hd, layout) = (c.head_dim, c.rope_layout);
        let q_order = qkv_order(c.q_dim(), hd, layout, true);
        let k_order = qkv_order(c.kv_dim(), hd, layout, true);
        let v_order = qkv_order(c.kv_dim(), hd, layout, false);
        let (q_rows, kv_rows) = (q_order.len(), k_order.len());
        for (i, l) in w.layers.iter().enumerate() {
            let (wq, bq) = reorder_proj(&l.wq, &l.bq, &q_order);
            let (wk, bk) = reorder_proj(&l.wk, &l.bk, &k_order);
            let (wv, bv) = reorder_proj(&l.wv, &l.bv, &v_order);
            let qkv = match stack_rows(&format!("blk.{i}.attn_qkv"), &[&wq, &wk, &wv]) {
                Some(t) if bq.is_some() == bk.is_some() && bk.is_some() == bv.is_some() => {
                    let bias = match (&bq, &bk, &bv) {
                        (Some(a), Some(b), Some(d)) => {
                            let data: Vec<u8> = [a, b, d]
                                .iter()
                                .flat_map(|t| t.data.iter().copied())
                                .collect();
                            Some(gpu.storage_init(&format!("blk.{i}.attn_qkv.bias"), &data)?)
                        }
                        _ => None,
                    };
                    vec![Proj {
                        m: mat(&t)?,
                        bias,
                        offset: 0,
                    }]
                }
                _ => vec![
                    Proj {
                        m: mat(&wq)?,
                        bias: opt(&bq)?,
                        offset: 0,
                    },
                    Proj {
                        m: mat(&wk)?,
                        bias: opt(&bk)?,
                        offset: q_rows,
                    },
                    Proj {
                        m: mat(&wv)?,
                        bias: opt(&bv)?,
                        offset: q_rows + kv_rows,
                    },
                ],
            };
            if qkv.iter().any(|p| p.bias.is_some() && p.m.part_count() > 1) {
                return Err(Error::gpu(
                    "biased projections larger than one storage binding are not supported",
                ));
            }
            let up = match interleave_gate_up(&format!("blk.{i}.ffn_gate_up"), &l.w_gate, &l.w_up) {
                Some(t) => FfnUp::Fused(mat(&t)?),
                None => FfnUp::Split(mat(&l.w_gate)?, mat(&l.w_up)?),
            };
            layers.push(GpuLayer {
                attn_norm: vec(&l.attn_norm)?,
                qkv,
                wo: mat(&l.wo)?,
                ffn_norm: vec(&l.ffn_norm)?,
                up,
                down: mat(&l.w_down)?,
            });
        }
        Ok(GpuModel {
            config: config.clone(),
            embed: mat(&w.embed)?,
            head: w.lm_head.as_ref().map(mat).transpose()?,
            layers,
            final_norm: vec(&w.final_norm)?,
            qkv_rows: (q_rows, kv_rows),
            gpu,
        })
    }

    fn head(&self) -> &GpuMatrix {
        self.head.as_ref().unwrap_or(&self.embed)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Step {
    t: u32,
    n0c: u32,
    head0: u32,
    sinks_cached: u32,
}

/// How an op is dispatched for a block of T tokens.
#[derive(Clone, Copy)]
enum Grid {
    /// (T, 1, 1)
    PerToken,
    /// (T, 1, 1) for blocks of more than one token; nothing for one (rope.wgsl did the work).
    PerTokenOfBlocks,
    /// (1, 1, 1)
    One,
    /// (ceil(T * per_token / 256), 1, 1)
    Elements(u32),
    /// One dispatch of `workgroups` per tile of `tt` tokens (1 when T = 1), with dynamic offsets:
    /// the inputs (rows of `k` floats) at the tile's first token, the tile index.
    Matmul { workgroups: u32, k: u32, tt: u32 },
    /// One dispatch per tile of `tq` queries (1 when T = 1): (key chunks, kv_heads, queries),
    /// dynamic offsets: the queries (rows of `q_floats`) at the tile's first query, the tile index.
    Scores {
        kv_heads: u32,
        tq: u32,
        q_floats: u32,
        keys_per_workgroup: u32,
    },
    /// (heads, T, splits): splits = ceil(keys / split), 1 where split = 0 (attn_out.wgsl)
    PerHead { heads: u32, split: u32 },
    /// One dispatch of (kv_heads, 1, splits) per query, with dynamic offsets: the window at the
    /// query's rows (of `row_floats`), the query index.
    PerQuery {
        kv_heads: u32,
        row_floats: u32,
        split: u32,
    },
}

struct Op {
    /// What the dispatch computes, for profiles ("matmul qkv", "attention scores", ...).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    name: &'static str,
    pipeline: Arc<Pipeline>,
    /// The variant for blocks of more than one token, where there is one.
    multi: Option<Arc<Pipeline>>,
    /// Attention scores of a single query: the variants with 1, 2, .. keys per invocation (RK),
    /// the fewest that cover the keys with as many workgroups as the largest would take, so a
    /// partly filled cache computes no more scores than it holds (attn_scores.wgsl).
    by_keys: Vec<Arc<Pipeline>>,
    bind: wgpu::BindGroup,
    grid: Grid,
}

impl Op {
    /// Records the op's dispatches for a block of `t` tokens whose last query sees `keys` keys.
    fn encode(&self, pass: &mut wgpu::ComputePass, t: u32, keys: u32) -> u64 {
        let mut pipeline = match (&self.multi, t > 1) {
            (Some(m), true) => m,
            _ => &self.pipeline,
        };
        // (keys per workgroup of a single query's scores: 64 x RK)
        let mut kpw = 0;
        if let Grid::Scores {
            keys_per_workgroup, ..
        } = self.grid
        {
            kpw = keys_per_workgroup;
            if t == 1 && !self.by_keys.is_empty() {
                let workgroups = keys.div_ceil(keys_per_workgroup);
                let rk = keys
                    .div_ceil(64 * workgroups)
                    .clamp(1, self.by_keys.len() as u32);
                pipeline = &self.by_keys[rk as usize - 1];
                kpw = 64 * rk;
            }
        }
        pass.set_pipeline(&pipeline.pipeline);
        let tiles = |n: u32| if t > 1 { t.div_ceil(n) } else { 1 };
        let splits = |split: u32| if split > 0 { keys.div_ceil(split) } else { 1 };
        match self.grid {
            Grid::PerToken => self.once(pass, (t, 1, 1)),
            Grid::PerTokenOfBlocks if t == 1 => 0,
            Grid::PerTokenOfBlocks => self.once(pass, (t, 1, 1)),
            Grid::One => self.once(pass, (1, 1, 1)),
            Grid::Elements(n) => self.once(pass, ((n * t).div_ceil(256), 1, 1)),
            Grid::PerHead { heads, split } => self.once(pass, (heads, t, splits(split))),
            Grid::PerQuery {
                kv_heads,
                row_floats,
                split,
            } => {
                for i in 0..t {
                    pass.set_bind_group(
                        0,
                        &self.bind,
                        &[i * row_floats * 4, i * TILE_STRIDE as u32],
                    );
                    pass.dispatch_workgroups(kv_heads, 1, splits(split));
                }
                t as u64
            }
            Grid::Matmul { workgroups, k, tt } => {
                let tt = if t > 1 { tt } else { 1 };
                let n = tiles(tt);
                for i in 0..n {
                    let x = i * tt * k * 4;
                    pass.set_bind_group(0, &self.bind, &[x, i * TILE_STRIDE as u32]);
                    pass.dispatch_workgroups(workgroups, 1, 1);
                }
                n as u64
            }
            Grid::Scores {
                kv_heads,
                tq,
                q_floats,
                ..
            } => {
                let tq = if t > 1 { tq } else { 1 };
                let n = tiles(tq);
                for i in 0..n {
                    let q = i * tq * q_floats * 4;
                    pass.set_bind_group(0, &self.bind, &[q, i * TILE_STRIDE as u32]);
                    pass.dispatch_workgroups(keys.div_ceil(kpw), kv_heads, tq.min(t));
                }
                n as u64
            }
        }
    }

    fn once(&self, pass: &mut wgpu::ComputePass, (x, y, z): (u32, u32, u32)) -> u64 {
        pass.set_bind_group(0, &self.bind, &[]);
        pass.dispatch_workgroups(x, y, z);
        1
    }
}

/// Which logits a block returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Logits {
    /// None (an intermediate block of a long prompt).
    Skip,
    /// Only the last token's (generation).
    Last,
    /// Every token's (evaluation): T x vocab.
    All,
}

/// A request to pick the sampler's candidates on the GPU after the last token (select.wgsl):
/// the repetition penalty on `recent`, then the best logit (`k` = 1) or at least the `k` best.
#[derive(Clone, Debug, Default)]
pub struct Select {
    pub k: u32,
    pub penalty: f32,
    pub recent: Vec<u32>,
    /// Logits further than this below the best one are never candidates (for k > 1); the
    /// sampler passes 30 x its temperature, a probability ratio below e^-30.
    pub span: f32,
}

/// What `Session::feed_select` returns: the candidates (penalty applied, in no order), or, when
/// ties made too many of them, the whole row of logits (penalty applied too).
#[derive(Clone, Debug)]
pub enum Picked {
    Candidates(Vec<(u32, f32)>),
    Row(Vec<f32>),
}

/// Live numbers about a session, for `/stats`, the browser and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub tokens_streamed: u64,
    pub cache_slots: usize,
    pub cache_fill: usize,
    pub sinks: usize,
    pub window: usize,
    pub write_head: usize,
    pub gpu_bytes: u64,
    pub gpu_buffers: u64,
    pub submissions: u64,
    pub dispatches: u64,
}

/// One stream through the model: its KV cache, its activations and the recorded dispatches.
pub struct Session {
    model: Arc<GpuModel>,
    policy: Policy,
    rule: CacheRule,
    max_batch: usize,
    count: u64,
    history: std::collections::VecDeque<u32>,
    step: GpuBuffer,
    tokens: GpuBuffer,
    rot: GpuBuffer,
    logits: GpuBuffer,
    readback: GpuBuffer,
    select: Op,
    select_params: GpuBuffer,
    select_recent: GpuBuffer,
    select_out: GpuBuffer,
    /// Two, so that a pipelined step can copy into one while the other is read (decode_greedy).
    select_read: [GpuBuffer; 2],
    body: Vec<Op>,
    head_all: Vec<Op>,
    head_last: Vec<Op>,
    submissions: u64,
    dispatches: u64,
    _keep: Vec<GpuBuffer>,
}

/// Builds the ops of a session: pipelines come from the GPU's cache, uniforms are kept alive.
struct Builder<'a> {
    gpu: &'a Gpu,
    keep: Vec<GpuBuffer>,
    tile: &'a GpuBuffer,
    dummy: &'a GpuBuffer,
    /// Invocations per matmul workgroup (matmul.wgsl's WGS).
    matmul_wgs: u32,
}

impl Builder<'_> {
    fn uniform(&mut self, label: &str, words: &[u32]) -> wgpu::Buffer {
        let b = self.gpu.uniform(label, bytemuck::cast_slice(words));
        let raw = b.buffer.clone();
        self.keep.push(b);
        raw
    }

    fn op(
        &self,
        name: &'static str,
        kernel: Kernel,
        constants: &[(&'static str, u32)],
        res: &[Bind],
        grid: Grid,
    ) -> Op {
        let pipeline = self.gpu.pipeline(kernel, constants);
        Op {
            name,
            bind: self.gpu.bind(&pipeline, name, res),
            pipeline,
            multi: None,
            by_keys: Vec::new(),
            grid,
        }
    }

    /// Y (+)= X W^T for every part of `m`: X is read through uniform windows, Y written from
    /// column `offset` in rows of `stride`. `swiglu`: `m` is gate/up interleaved, Y = silu(g) * u.
    /// `rope`: the Q/K/V projection, its outputs rotated and staged by rope.wgsl, which takes
    /// these resources (bindings 7..).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &mut self,
        ops: &mut Vec<Op>,
        name: &'static str,
        step: &wgpu::Buffer,
        m: &GpuMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        (stride, offset): (usize, usize),
        bias: Option<&GpuBuffer>,
        accumulate: bool,
        swiglu: bool,
        rope: Option<&[Bind]>,
    ) {
        let tt = m.tile_tokens();
        let wt = wtype(m.dtype);
        let kernel = if rope.is_some() {
            Kernel::MatmulRope
        } else {
            Kernel::Matmul
        };
        for (buf, r0, rows) in &m.parts {
            let flags = accumulate as u32 | ((bias.is_some() as u32) << 1) | ((swiglu as u32) << 2);
            let (y_offset, out_n) = if swiglu {
                (r0 / 2, stride as u32)
            } else {
                (offset + r0, 0)
            };
            let dims = self.uniform(
                "matmul_dims",
                &[
                    m.cols as u32,
                    *rows as u32,
                    stride as u32,
                    y_offset as u32,
                    m.dtype.gpu_group_vec4s(m.cols) as u32,
                    flags,
                    out_n,
                    0,
                ],
            );
            let b = bias.map(|b| &b.buffer).unwrap_or(&self.dummy.buffer);
            let slots = (rows.div_ceil(GPU_GROUP)).div_ceil(MATMUL_RG) * GPU_GROUP;
            let rg = MATMUL_RG as u32;
            let wgs = self.matmul_wgs;
            let mut res = vec![
                Bind::Whole(step),
                Bind::Whole(&dims),
                Bind::Whole(buf),
                Bind::Window(x, UNIFORM_WINDOW),
                Bind::Whole(y),
                Bind::Whole(b),
                Bind::Window(&self.tile.buffer, 16),
            ];
            res.extend(rope.unwrap_or(&[]).iter().copied());
            let mut op = self.op(
                name,
                kernel,
                &[("WTYPE", wt), ("TT", 1), ("RG", rg), ("WGS", wgs)],
                &res,
                Grid::Matmul {
                    workgroups: slots.div_ceil(wgs as usize) as u32,
                    k: m.cols as u32,
                    tt,
                },
            );
            op.multi = Some(self.gpu.pipeline(
                kernel,
                &[("WTYPE", wt), ("TT", tt), ("RG", rg), ("WGS", wgs)],
            ));
            ops.push(op);
        }
    }
}

impl Session {
    /// `max_batch`: tokens per block (prefill and chunked evaluation); memory grows with it.
    pub fn new(model: Arc<GpuModel>, policy: Policy, max_batch: usize) -> Result<Session> {
        policy.validate()?;
        if max_batch == 0 {
            return Err(Error::invalid("the batch size must be at least 1"));
        }
        let gpu = model.gpu.clone();
        let c = &model.config;
        let rule = policy.rule();
        let f = 4u64;
        let tb = max_batch as u64;
        let slots = rule.slots();
        let (dim, qd, kvd, ffn, vocab) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim, c.vocab);
        let group = (c.n_heads / c.n_kv_heads) as u32;
        // Queries per attention tile: as many as one uniform window holds (ring and sink
        // rotations), a power of two so tile offsets stay aligned.
        let mut tq = 8usize;
        while tq > 1 && tq * 2 * qd > WINDOW_FLOATS {
            tq /= 2;
        }
        if 2 * qd > WINDOW_FLOATS || (tq > 1 && (tq * 2 * qd * 4) % 256 != 0) {
            return Err(Error::gpu(format!(
                "query width {qd}: too large for sinkstream's attention kernel"
            )));
        }

        let step = gpu.uniform("step", bytemuck::bytes_of(&Step::zeroed()));
        let step_one = gpu.uniform(
            "step_one",
            bytemuck::bytes_of(&Step {
                t: 1,
                ..Step::zeroed()
            }),
        );
        // Tile indices 0, 1, 2, ... at the dynamic-offset alignment.
        let tiles: Vec<u32> = (0..max_batch as u32 + 1)
            .flat_map(|i| {
                let mut e = [0u32; (TILE_STRIDE / 4) as usize];
                e[0] = i;
                e
            })
            .collect();
        let tile = gpu.uniform("tiles", bytemuck::cast_slice(&tiles));
        let tokens = gpu.storage("tokens", tb * 4)?;
        let x = gpu.storage("x", tb * dim as u64 * f)?;
        let xn = gpu.windowed("xn", tb * dim as u64 * f)?;
        let xlast = gpu.windowed("xlast", dim as u64 * f)?;
        let qr = gpu.windowed("q_rotated", tb * 2 * qd as u64 * f)?;
        // score rows padded to 64 floats, so that each query's rows start on a window offset
        let lstride = slots.div_ceil(64) * 64;
        let sc = gpu.windowed("scores", tb * c.n_heads as u64 * lstride as u64 * f)?;
        let att = gpu.windowed("attention_out", tb * qd as u64 * f)?;
        let act = gpu.windowed("swiglu", tb * ffn as u64 * f)?;
        let logits = gpu.storage("logits", tb * vocab as u64 * f)?;
        let readback = gpu.readback("logits_readback", tb * vocab as u64 * f);
        let rot = gpu.storage("rotations", tb * c.head_dim as u64 * 2 * f)?;
        let dummy = gpu.storage("dummy", 4)?;
        // Y of the Q/K/V projection, whose outputs go elsewhere (rope.wgsl)
        let no_output = gpu.storage("no_output", 4)?;
        let split_ffn = model
            .layers
            .iter()
            .any(|l| matches!(l.up, FfnUp::Split(..)));
        let gate_up = if split_ffn {
            Some(gpu.storage("gate_up", tb * 2 * ffn as u64 * f)?)
        } else {
            None
        };

        let cpu_device = gpu.info.device_type == wgpu::DeviceType::Cpu;
        let mut b = Builder {
            gpu: &gpu,
            keep: Vec::new(),
            tile: &tile,
            dummy: &dummy,
            // On a CPU device each workgroup runs on one worker thread, 8 invocations at a time:
            // workgroups of 8 spread the small projections (576 rows: 18 SIMD groups) evenly
            // over the threads, where workgroups of 64 leave one thread a third more work.
            matmul_wgs: if cpu_device { 8 } else { 64 },
        };
        let mut body = Vec::new();
        let mut caches = Vec::new();

        for (buf, r0, rows) in &model.embed.parts {
            let m = &model.embed;
            let dims = b.uniform(
                "embed_dims",
                &[
                    dim as u32,
                    *r0 as u32,
                    *rows as u32,
                    m.dtype.gpu_group_vec4s(m.cols) as u32,
                ],
            );
            body.push(b.op(
                "embed",
                Kernel::Embed,
                &[("WTYPE", wtype(m.dtype))],
                &[
                    Bind::Whole(&step),
                    Bind::Whole(&dims),
                    Bind::Whole(buf),
                    Bind::Whole(&tokens),
                    Bind::Whole(&x),
                ],
                Grid::PerToken,
            ));
        }
        // threads per norm row: no more than one SIMD group where workgroups run on a CPU
        // (fewer barrier steps), a workgroup of 64 elsewhere
        let norm_nt: u32 = if cpu_device { 8 } else { 64 };
        let norm_dims = b.uniform("norm_dims", &[dim as u32, c.norm_eps.to_bits(), 0, 0]);
        let norm_last_dims = b.uniform("norm_last_dims", &[dim as u32, c.norm_eps.to_bits(), 1, 0]);
        let scratch = slots as u32;
        let rope_dims = b.uniform(
            "rope_dims",
            &[
                c.n_heads as u32,
                c.n_kv_heads as u32,
                c.head_dim as u32,
                (c.rope_layout == RopeLayout::Half) as u32,
                model.qkv_rows.0 as u32,
                model.qkv_rows.1 as u32,
                scratch,
                rule.sinks as u32,
            ],
        );
        let attn_dims = b.uniform(
            "attention_dims",
            &[
                c.n_heads as u32,
                c.n_kv_heads as u32,
                c.head_dim as u32,
                rule.sinks as u32,
                rule.window as u32,
                scratch,
                lstride as u32,
                (1.0 / (c.head_dim as f32).sqrt()).to_bits(),
            ],
        );
        let kv_dims = b.uniform(
            "kv_write_dims",
            &[kvd as u32, rule.sinks as u32, rule.window as u32, scratch],
        );
        let silu_dims = b.uniform("silu_dims", &[ffn as u32, 0, 0, 0]);
        // keys per scores invocation: more share each query load, but idle lanes cost too
        let rk = if slots >= 512 { 8 } else { 4 }.min(32 / group);
        let scores_consts = |tq: u32| [("G", group), ("RK", rk), ("TQ", tq)];
        let wg_out = ((c.head_dim / 8).div_ceil(8) * 8) as u32;
        // Long caches spread each query's attention output over splits of ATTN_SPLIT keys
        // (attn_out.wgsl, attn_reduce.wgsl): partial sums per split, then one reduce.
        let split = if slots >= 2 * ATTN_SPLIT {
            ATTN_SPLIT
        } else {
            0
        };
        let hd4 = c.head_dim / 4;
        // (unsplit sessions get the same constants whatever their size: one pipeline for all)
        let (nsplit, ml0) = if split > 0 {
            let n = slots.div_ceil(ATTN_SPLIT);
            (n, max_batch * c.n_heads * n * hd4)
        } else {
            (1, 0)
        };
        let partials = if split > 0 {
            Some(gpu.storage(
                "attention_partials",
                ((ml0 + max_batch * c.n_heads * nsplit) * 16) as u64,
            )?)
        } else {
            None
        };
        let out_consts = [
            ("G", group),
            ("WG", wg_out),
            ("SPLIT", split as u32),
            ("NSPLIT", nsplit as u32),
            ("ML0", ml0 as u32),
        ];
        let out_to = partials.as_ref().unwrap_or(&att);
        let cache_rows = (slots + max_batch) as u64;

        for (li, l) in model.layers.iter().enumerate() {
            let kc = gpu.storage(&format!("k_cache_{li}"), cache_rows * kvd as u64 * f)?;
            let vc = gpu.storage(&format!("v_cache_{li}"), cache_rows * kvd as u64 * f)?;
            let norm = |b: &Builder, g: &GpuBuffer, y: &GpuBuffer| {
                b.op(
                    "rmsnorm",
                    Kernel::RmsNorm,
                    &[("NT", norm_nt)],
                    &[
                        Bind::Whole(&step),
                        Bind::Whole(&norm_dims),
                        Bind::Whole(&x),
                        Bind::Whole(g),
                        Bind::Whole(y),
                    ],
                    Grid::PerToken,
                )
            };
            body.push(norm(&b, &l.attn_norm, &xn));
            let rope = [
                Bind::Whole(&rope_dims),
                Bind::Whole(&rot),
                Bind::Whole(&qr),
                Bind::Whole(&kc),
                Bind::Whole(&vc),
            ];
            for p in &l.qkv {
                b.matmul(
                    &mut body,
                    "matmul qkv + rope",
                    &step,
                    &p.m,
                    &xn,
                    &no_output,
                    (0, p.offset),
                    p.bias.as_ref(),
                    false,
                    false,
                    Some(&rope),
                );
            }
            let scores_res = [
                Bind::Whole(&step),
                Bind::Whole(&attn_dims),
                Bind::Window(&qr, UNIFORM_WINDOW),
                Bind::Whole(&kc),
                Bind::Whole(&sc),
                Bind::Window(&tile, 16),
            ];
            let mut op = b.op(
                "attention scores",
                Kernel::AttnScores,
                &scores_consts(1),
                &scores_res,
                Grid::Scores {
                    kv_heads: c.n_kv_heads as u32,
                    tq: tq as u32,
                    q_floats: 2 * qd as u32,
                    keys_per_workgroup: 64 * rk,
                },
            );
            op.multi = Some(gpu.pipeline(Kernel::AttnScores, &scores_consts(tq as u32)));
            op.by_keys = (1..=rk)
                .map(|r| gpu.pipeline(Kernel::AttnScores, &[("G", group), ("RK", r), ("TQ", 1)]))
                .collect();
            body.push(op);
            // the scores of one query through a uniform window where they fit one
            let row_floats = (c.n_heads * lstride) as u32;
            body.push(if row_floats as usize <= WINDOW_FLOATS {
                b.op(
                    "attention out",
                    Kernel::AttnOut,
                    &out_consts,
                    &[
                        Bind::Whole(&step),
                        Bind::Whole(&attn_dims),
                        Bind::Window(&sc, UNIFORM_WINDOW),
                        Bind::Whole(&vc),
                        Bind::Whole(out_to),
                        Bind::Window(&tile, 16),
                    ],
                    Grid::PerQuery {
                        kv_heads: c.n_kv_heads as u32,
                        row_floats,
                        split: split as u32,
                    },
                )
            } else {
                b.op(
                    "attention out",
                    Kernel::AttnOutWide,
                    &out_consts,
                    &[
                        Bind::Whole(&step),
                        Bind::Whole(&attn_dims),
                        Bind::Whole(&sc),
                        Bind::Whole(&vc),
                        Bind::Whole(out_to),
                        Bind::Whole(&tile),
                    ],
                    Grid::PerHead {
                        heads: c.n_kv_heads as u32,
                        split: split as u32,
                    },
                )
            });
            if let Some(p) = &partials {
                body.push(b.op(
                    "attention reduce",
                    Kernel::AttnReduce,
                    &[
                        ("WG", (hd4.div_ceil(8) * 8) as u32),
                        ("SPLIT", split as u32),
                        ("NSPLIT", nsplit as u32),
                        ("ML0", ml0 as u32),
                    ],
                    &[
                        Bind::Whole(&step),
                        Bind::Whole(&attn_dims),
                        Bind::Whole(p),
                        Bind::Whole(&att),
                    ],
                    Grid::PerHead {
                        heads: c.n_heads as u32,
                        split: 0,
                    },
                ));
            }
            body.push(b.op(
                "kv_write",
                Kernel::KvWrite,
                &[],
                &[
                    Bind::Whole(&step),
                    Bind::Whole(&kv_dims),
                    Bind::Whole(&kc),
                    Bind::Whole(&vc),
                ],
                Grid::PerTokenOfBlocks,
            ));
            b.matmul(
                &mut body,
                "matmul o",
                &step,
                &l.wo,
                &att,
                &x,
                (dim, 0),
                None,
                true,
                false,
                None,
            );
            body.push(norm(&b, &l.ffn_norm, &xn));
            match &l.up {
                FfnUp::Fused(m) => b.matmul(
                    &mut body,
                    "matmul gate+up",
                    &step,
                    m,
                    &xn,
                    &act,
                    (ffn, 0),
                    None,
                    false,
                    true,
                    None,
                ),
                FfnUp::Split(gate, up) => {
                    let gu = gate_up
                        .as_ref()
                        .ok_or_else(|| Error::gpu("gate/up buffer"))?;
                    for (m, off) in [(gate, 0), (up, ffn)] {
                        b.matmul(
                            &mut body,
                            "matmul gate+up",
                            &step,
                            m,
                            &xn,
                            gu,
                            (2 * ffn, off),
                            None,
                            false,
                            false,
                            None,
                        );
                    }
                    body.push(b.op(
                        "silu_mul",
                        Kernel::SiluMul,
                        &[],
                        &[
                            Bind::Whole(&step),
                            Bind::Whole(&silu_dims),
                            Bind::Whole(gu),
                            Bind::Whole(&act),
                        ],
                        Grid::Elements(ffn as u32),
                    ));
                }
            }
            b.matmul(
                &mut body,
                "matmul down",
                &step,
                &l.down,
                &act,
                &x,
                (dim, 0),
                None,
                true,
                false,
                None,
            );
            caches.push(kc);
            caches.push(vc);
        }

        let mut head_all = vec![b.op(
            "rmsnorm",
            Kernel::RmsNorm,
            &[("NT", norm_nt)],
            &[
                Bind::Whole(&step),
                Bind::Whole(&norm_dims),
                Bind::Whole(&x),
                Bind::Whole(&model.final_norm),
                Bind::Whole(&xn),
            ],
            Grid::PerToken,
        )];
        b.matmul(
            &mut head_all,
            "lm head",
            &step,
            model.head(),
            &xn,
            &logits,
            (vocab, 0),
            None,
            false,
            false,
            None,
        );
        let mut head_last = vec![b.op(
            "rmsnorm",
            Kernel::RmsNorm,
            &[("NT", norm_nt)],
            &[
                Bind::Whole(&step),
                Bind::Whole(&norm_last_dims),
                Bind::Whole(&x),
                Bind::Whole(&model.final_norm),
                Bind::Whole(&xlast),
            ],
            Grid::One,
        )];
        b.matmul(
            &mut head_last,
            "lm head",
            &step_one,
            model.head(),
            &xlast,
            &logits,
            (vocab, 0),
            None,
            false,
            false,
            None,
        );

        // candidate selection for the sampler, on the last token's row of logits
        let select_params = gpu.uniform("select_params", &[0u8; 32]);
        let select_recent = gpu.storage("select_recent", SELECT_RECENT as u64 * 4)?;
        let select_bytes = (4 + 2 * SELECT_CAP as u64) * 4;
        let select_out = gpu.storage("select_out", select_bytes)?;
        let select_read = [
            gpu.readback("select_readback", select_bytes),
            gpu.readback("select_readback_b", select_bytes),
        ];
        let select = b.op(
            "select",
            Kernel::Select,
            &[],
            &[
                Bind::Whole(&select_params),
                Bind::Whole(&logits),
                Bind::Whole(&select_recent),
                Bind::Whole(&select_out),
            ],
            Grid::One,
        );

        let mut keep = b.keep;
        keep.extend([
            x, xn, xlast, qr, sc, att, act, dummy, no_output, step_one, tile,
        ]);
        keep.extend(gate_up);
        keep.extend(partials);
        keep.extend(caches);
        Ok(Session {
            model,
            policy,
            rule,
            max_batch,
            count: 0,
            history: Default::default(),
            step,
            tokens,
            rot,
            logits,
            readback,
            select,
            select_params,
            select_recent,
            select_out,
            select_read,
            body,
            head_all,
            head_last,
            submissions: 0,
            dispatches: 0,
            _keep: keep,
        })
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn rule(&self) -> CacheRule {
        self.rule
    }

    pub fn config(&self) -> &Config {
        &self.model.config
    }

    pub fn gpu(&self) -> &Gpu {
        &self.model.gpu
    }

    /// Tokens streamed through the cache so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Benchmarks only: moves the stream to token `n` without computing the tokens before it.
    /// The cache then holds stale values, but every kernel does exactly the work it would do at
    /// that point of a real stream (it depends only on the cache's geometry), so per-token
    /// timings deep into a stream can be taken on slow devices.
    pub fn fast_forward(&mut self, n: u64) {
        self.count = self.count.max(n);
    }

    /// Forgets the stream; the cache's memory stays allocated.
    pub fn reset(&mut self) {
        self.count = 0;
        self.history.clear();
    }

    pub fn stats(&self) -> Stats {
        let gpu = &self.model.gpu;
        Stats {
            tokens_streamed: self.count,
            cache_slots: self.rule.slots(),
            cache_fill: self.rule.fill(self.count),
            sinks: self.rule.sinks,
            window: self.rule.window,
            write_head: self.rule.write_head(self.count),
            gpu_bytes: gpu.allocated_bytes(),
            gpu_buffers: gpu.buffer_count(),
            submissions: self.submissions,
            dispatches: self.dispatches,
        }
    }

    /// Streams `tokens` through the model; returns the logits asked for.
    pub async fn feed(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        if let Policy::Recompute { window } = self.policy {
            if tokens.is_empty() {
                return Err(Error::invalid("no tokens to feed"));
            }
            // Every token: the model re-run over the last W tokens from an empty cache.
            let mut out = Vec::new();
            for (i, &t) in tokens.iter().enumerate() {
                self.history.push_back(t);
                if self.history.len() > window {
                    self.history.pop_front();
                }
                // Each re-run starts from an empty cache, so a token whose logits nobody asked
                // for needs no run: only the history moves.
                let wanted =
                    which == Logits::All || (which == Logits::Last && i + 1 == tokens.len());
                if !wanted {
                    continue;
                }
                self.count = 0;
                let hist: Vec<u32> = self.history.iter().copied().collect();
                let mut last = Vec::new();
                for chunk in hist.chunks(self.max_batch) {
                    last = self.block(chunk, Logits::Last, false).await?;
                }
                if which == Logits::All {
                    out.extend(last);
                } else {
                    out = last;
                }
            }
            return Ok(out);
        }
        self.check_tokens(tokens)?;
        let mut out = Vec::new();
        let blocks: Vec<&[u32]> = tokens.chunks(self.max_batch).collect();
        let nb = blocks.len();
        for (i, b) in blocks.into_iter().enumerate() {
            let w = if which == Logits::All {
                Logits::All
            } else if i + 1 == nb {
                Logits::Last
            } else {
                Logits::Skip
            };
            let l = self.block(b, w, false).await?;
            out.extend(l);
        }
        Ok(out)
    }

    /// Streams `tokens` through the model like `feed` with `Logits::Last`, then picks the
    /// sampler's candidates on the GPU, so a few bytes come back instead of a row of logits.
    pub async fn feed_select(&mut self, tokens: &[u32], sel: &Select) -> Result<Picked> {
        if sel.k == 0 || sel.k as usize > SELECT_CAP || sel.recent.len() > SELECT_RECENT {
            return Err(Error::invalid(format!(
                "candidate selection takes 1..={SELECT_CAP} candidates and up to {SELECT_RECENT} recent tokens"
            )));
        }
        if !(sel.penalty.is_finite() && sel.penalty > 0.0) {
            return Err(Error::invalid(
                "the repetition penalty must be a finite number > 0",
            ));
        }
        if matches!(self.policy, Policy::Recompute { .. }) {
            let row = self.feed(tokens, Logits::Last).await?;
            return Ok(Picked::Row(row));
        }
        self.check_tokens(tokens)?;
        let n = tokens.len();
        let last = (n - 1) / self.max_batch * self.max_batch;
        if last > 0 {
            self.feed(&tokens[..last], Logits::Skip).await?;
        }
        let gpu = self.model.gpu.clone();
        let params = [
            self.model.config.vocab as u32,
            sel.k,
            sel.penalty.to_bits(),
            sel.recent.len() as u32,
            sel.span.to_bits(),
            0,
            0,
            0,
        ];
        gpu.queue
            .write_buffer(&self.select_params, 0, bytemuck::cast_slice(&params));
        if !sel.recent.is_empty() {
            gpu.queue
                .write_buffer(&self.select_recent, 0, bytemuck::cast_slice(&sel.recent));
        }
        let words = self.block(&tokens[last..], Logits::Last, true).await?;
        let words: &[u32] = bytemuck::cast_slice(&words);
        let count = words[0] as usize;
        if count > SELECT_CAP {
            // ties: the whole row (penalised in place) instead
            let mut enc = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("row") });
            let bytes = self.model.config.vocab as u64 * 4;
            enc.copy_buffer_to_buffer(&self.logits, 0, &self.readback, 0, bytes);
            gpu.queue.submit([enc.finish()]);
            return Ok(Picked::Row(
                read_buffer(&gpu, &self.readback, bytes, None).await?,
            ));
        }
        Ok(Picked::Candidates(
            (0..count)
                .map(|i| (words[4 + 2 * i], f32::from_bits(words[5 + 2 * i])))
                .collect(),
        ))
    }

    /// Greedy decoding with the next step always in flight. Each step's greedy pick
    /// (select.wgsl, k = 1) is copied on the GPU into the token buffer that the next step's
    /// embedding reads, so step i+1 is submitted before token i comes back; the ids come back
    /// through two readback buffers in turn (4 bytes used of each). Feeds `first`, then returns
    /// up to `max_new` tokens, the last one the first for which `stop` says true.
    ///
    /// The step already submitted past a stop token is taken back (the stream count steps back
    /// by one). That is exact: the only cache slot it wrote is the one the next token writes,
    /// and the key it overwrote there (a ring token W behind the next one, or an empty slot) is
    /// outside every later query's window. No repetition penalty (it needs token i on the host
    /// before step i+1 is submitted: use `feed_select`), and not under recompute.
    pub async fn decode_greedy(
        &mut self,
        first: u32,
        max_new: usize,
        mut stop: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        if matches!(self.policy, Policy::Recompute { .. }) {
            return Err(Error::invalid(
                "pipelined greedy decoding re-uses the cache: not under recompute",
            ));
        }
        self.check_tokens(&[first])?;
        if let Policy::Dense { max } = self.policy {
            if self.count + max_new as u64 > max as u64 {
                return Err(Error::CacheFull(format!(
                    "the dense cache holds {max} tokens: {} streamed, {max_new} more asked for",
                    self.count
                )));
            }
        }
        let mut out = Vec::with_capacity(max_new.min(1 << 16));
        if max_new == 0 {
            return Ok(out);
        }
        let gpu = self.model.gpu.clone();
        let params = [
            self.model.config.vocab as u32,
            1,
            1f32.to_bits(),
            0,
            0,
            0,
            0,
            0,
        ];
        gpu.queue
            .write_buffer(&self.select_params, 0, bytemuck::cast_slice(&params));
        let mut flight = (self.submit_greedy_step(Some(first), 0), 0);
        loop {
            let (index, slot) = flight;
            let next = if out.len() + 1 < max_new {
                Some((self.submit_greedy_step(None, 1 - slot), 1 - slot))
            } else {
                None
            };
            let words = read_buffer(&gpu, &self.select_read[slot], 32, Some(index)).await?;
            let id = words[4].to_bits();
            out.push(id);
            match next {
                Some(n) if !stop(id) => flight = n,
                Some(_) => {
                    self.count -= 1;
                    return Ok(out);
                }
                None => {
                    stop(id);
                    return Ok(out);
                }
            }
        }
    }

    /// One step of `decode_greedy`: the token `id` (or the one the previous step picked, already
    /// in the token buffer), the last-token head, the greedy pick, and the two copies of it.
    fn submit_greedy_step(&mut self, id: Option<u32>, slot: usize) -> wgpu::SubmissionIndex {
        let gpu = self.model.gpu.clone();
        match id {
            Some(id) => self.write_step(&[id]),
            None => self.write_step_ids(1, None),
        }
        let mut enc = self.encode_forward(1, Logits::Last, true);
        // select_out: [count, _, _, _, id, logit, ...]
        enc.copy_buffer_to_buffer(&self.select_out, 16, &self.tokens, 0, 4);
        enc.copy_buffer_to_buffer(&self.select_out, 0, &self.select_read[slot], 0, 32);
        let index = gpu.queue.submit([enc.finish()]);
        self.submissions += 1;
        self.count += 1;
        index
    }

    /// Native convenience: `decode_greedy` blocking on the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_greedy_blocking(
        &mut self,
        first: u32,
        max_new: usize,
        stop: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        pollster::block_on(self.decode_greedy(first, max_new, stop))
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::invalid("no tokens to feed"));
        }
        let vocab = self.model.config.vocab;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        if let Policy::Dense { max } = self.policy {
            if self.count + tokens.len() as u64 > max as u64 {
                return Err(Error::CacheFull(format!(
                    "the dense cache holds {max} tokens and {} more would not fit ({} streamed so far); raise --max-context or use the sink policy, which streams forever",
                    tokens.len(),
                    self.count
                )));
            }
        }
        Ok(())
    }

    /// Native convenience: `feed_select` blocking on the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn feed_select_blocking(&mut self, tokens: &[u32], sel: &Select) -> Result<Picked> {
        pollster::block_on(self.feed_select(tokens, sel))
    }

    /// Native convenience: `feed` blocking on the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn feed_blocking(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        pollster::block_on(self.feed(tokens, which))
    }

    /// Writes what a block needs besides its ops: its place in the stream (the step uniform),
    /// its token ids, and each token's RoPE rotations, computed here in f64 (rope.wgsl).
    fn write_step(&self, tokens: &[u32]) {
        self.write_step_ids(tokens.len(), Some(tokens));
    }

    /// `write_step` for `t` tokens whose ids are `ids`, or with `None` already in the token
    /// buffer (put there by the previous step: decode_greedy).
    fn write_step_ids(&self, t: usize, ids: Option<&[u32]>) {
        let gpu = &self.model.gpu;
        let (s, w) = (self.rule.sinks as u64, self.rule.window as u64);
        let n0 = self.count;
        let st = Step {
            t: t as u32,
            n0c: n0.min(s + w) as u32,
            head0: ((n0.max(s) - s) % w) as u32,
            sinks_cached: n0.min(s) as u32,
        };
        gpu.queue
            .write_buffer(&self.step, 0, bytemuck::bytes_of(&st));
        if let Some(ids) = ids {
            gpu.queue
                .write_buffer(&self.tokens, 0, bytemuck::cast_slice(ids));
        }
        let freqs = &self.model.config.rope_freqs;
        let mut rot = Vec::with_capacity(t * freqs.len() * 4);
        for i in 0..t as u64 {
            let n = n0 + i;
            // the stream index (ring keys and the queries' ring rotation) and the cache position
            let position = self.rule.attended_len(n) as u64 - 1;
            for p in [n, position] {
                for fr in freqs {
                    let a = p as f64 * fr;
                    rot.push(a.cos() as f32);
                    rot.push(a.sin() as f32);
                }
            }
        }
        gpu.queue
            .write_buffer(&self.rot, 0, bytemuck::cast_slice(&rot));
    }

    /// Keys the last query of a block of `t` tokens attends to.
    fn block_keys(&self, t: usize) -> u32 {
        self.rule.attended_len(self.count + t as u64 - 1) as u32
    }

    /// The command encoder of one block of `t` tokens (its step already written): every op, the
    /// head asked for, and with `select` the candidate selection.
    fn encode_forward(&mut self, t: u32, which: Logits, select: bool) -> wgpu::CommandEncoder {
        let keys = self.block_keys(t as usize);
        let mut enc =
            self.model
                .gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("block"),
                });
        let head = match which {
            Logits::All => &self.head_all[..],
            Logits::Last => &self.head_last[..],
            Logits::Skip => &[][..],
        };
        // the last-token head runs on one token whatever the block's length
        let head_t = if which == Logits::Last { 1 } else { t };
        let mut dispatches = 0;
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes: None,
            });
            for op in &self.body {
                dispatches += op.encode(&mut pass, t, keys);
            }
            for op in head {
                dispatches += op.encode(&mut pass, head_t, keys);
            }
            if select {
                dispatches += self.select.encode(&mut pass, 1, keys);
            }
        }
        self.dispatches += dispatches;
        enc
    }

    /// One block: every op, the head asked for, and with `select` the candidate selection
    /// (whose output words come back instead of logits).
    async fn block(&mut self, tokens: &[u32], which: Logits, select: bool) -> Result<Vec<f32>> {
        let gpu = self.model.gpu.clone();
        let t = tokens.len() as u32;
        self.write_step(tokens);
        let mut enc = self.encode_forward(t, which, select);
        if select {
            let bytes = self.select_read[0].size();
            enc.copy_buffer_to_buffer(&self.select_out, 0, &self.select_read[0], 0, bytes);
            gpu.queue.submit([enc.finish()]);
            self.submissions += 1;
            self.count += t as u64;
            return read_buffer(&gpu, &self.select_read[0], bytes, None).await;
        }
        let vocab = self.model.config.vocab as u64;
        let rows = match which {
            Logits::All => t as u64,
            Logits::Last => 1,
            Logits::Skip => 0,
        };
        let bytes = rows * vocab * 4;
        if bytes > 0 {
            enc.copy_buffer_to_buffer(&self.logits, 0, &self.readback, 0, bytes);
        }
        gpu.queue.submit([enc.finish()]);
        self.submissions += 1;
        self.count += t as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        read_buffer(&gpu, &self.readback, bytes, None).await
    }
}

/// Time spent on the GPU by one kind of dispatch during a profiled block.
#[derive(Clone, Debug)]
pub struct OpTime {
    pub name: &'static str,
    pub dispatches: u32,
    pub seconds: f64,
}

impl Session {
    /// Runs one block like `feed` with `Logits::Last` and the greedy pick on the GPU, but with
    /// every op in its own compute pass bracketed by GPU timestamps; returns the time per kind of
    /// op, largest first. Needs the adapter's TIMESTAMP_QUERY feature (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_block(&mut self, tokens: &[u32]) -> Result<Vec<OpTime>> {
        let gpu = self.model.gpu.clone();
        if !gpu
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return Err(Error::gpu(format!(
                "{} has no TIMESTAMP_QUERY: cannot profile",
                gpu.info.name
            )));
        }
        if tokens.is_empty()
            || tokens.len() > self.max_batch
            || matches!(self.policy, Policy::Recompute { .. })
        {
            return Err(Error::invalid(
                "profile one block of 1..=max_batch tokens (not under recompute)",
            ));
        }
        // the head of the last token, then the greedy pick as a decode step makes it
        let ops: Vec<&Op> = self
            .body
            .iter()
            .chain(&self.head_last)
            .chain([&self.select])
            .collect();
        let n = ops.len() as u32 * 2;
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: n,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile_resolve"),
            size: n as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile_read"),
            size: n as u64 * 8,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.write_step(tokens);
        let greedy = [
            self.model.config.vocab as u32,
            1,
            1f32.to_bits(),
            0,
            0,
            0,
            0,
            0,
        ];
        gpu.queue
            .write_buffer(&self.select_params, 0, bytemuck::cast_slice(&greedy));
        let keys = self.block_keys(tokens.len());
        let t = tokens.len() as u32;
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("profile"),
            });
        let mut counts = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(op.name),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &set,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            let op_t = if i >= self.body.len() { 1 } else { t };
            counts.push(op.encode(&mut pass, op_t, keys));
        }
        enc.resolve_query_set(&set, 0..n, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, n as u64 * 8);
        gpu.queue.submit([enc.finish()]);
        self.count += t as u64;
        let words = pollster::block_on(read_buffer(&gpu, &read, n as u64 * 8, None))?;
        let stamps: &[u64] = bytemuck::cast_slice(&words);
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        let mut out: Vec<OpTime> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let dt = stamps[2 * i + 1].saturating_sub(stamps[2 * i]) as f64 * period;
            match out.iter_mut().find(|o| o.name == op.name) {
                Some(o) => {
                    o.dispatches += counts[i] as u32;
                    o.seconds += dt;
                }
                None => out.push(OpTime {
                    name: op.name,
                    dispatches: counts[i] as u32,
                    seconds: dt,
                }),
            }
        }
        out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Ok(out)
    }
}

/// Maps `size` bytes of a MAP_READ buffer and copies them out as f32.
/// Maps `buffer` and copies it out; natively waits for `after` (a submission), or for everything
/// submitted so far.
async fn read_buffer(
    gpu: &Gpu,
    buffer: &wgpu::Buffer,
    size: u64,
    after: Option<wgpu::SubmissionIndex>,
) -> Result<Vec<f32>> {
    let slot: MapSlot = Arc::new(Mutex::new((None, None)));
    let s2 = slot.clone();
    buffer.map_async(wgpu::MapMode::Read, 0..size, move |r| {
        let mut g = s2.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = Some(r);
        if let Some(w) = g.1.take() {
            w.wake();
        }
    });
    #[cfg(not(target_arch = "wasm32"))]
    gpu.device
        .poll(wgpu::PollType::Wait {
            submission_index: after,
            timeout: None,
        })
        .map_err(|e| Error::gpu(format!("the GPU did not finish: {e}")))?;
    #[cfg(target_arch = "wasm32")]
    let _ = (gpu, after);
    MapFuture(slot)
        .await
        .map_err(|e| Error::gpu(format!("reading results back failed: {e}")))?;
    let out = {
        let view = buffer
            .get_mapped_range(0..size)
            .map_err(|e| Error::gpu(format!("reading results back failed: {e}")))?;
        bytemuck::cast_slice::<u8, f32>(&view).to_vec()
    };
    buffer.unmap();
    Ok(out)
}

type MapSlot = Arc<
    Mutex<(
        Option<std::result::Result<(), wgpu::BufferAsyncError>>,
        Option<Waker>,
    )>,
>;

struct MapFuture(MapSlot);

impl Future for MapFuture {
    type Output = std::result::Result<(), wgpu::BufferAsyncError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match g.0.take() {
            Some(r) => Poll::Ready(r),
            None => {
                g.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
