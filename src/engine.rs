//! The GPU forward pass: weights uploaded once in their file formats, and a `Session` that owns
//! one stream's KV cache and streams blocks of tokens through the model under a cache policy.
//!
//! Everything (buffers, bind groups, the list of dispatches) is created in `Session::new`; a
//! block costs a few small uniform writes, one command buffer, one submission and one readback.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytemuck::{Pod, Zeroable};

use crate::cache::{CacheRule, Policy};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuBuffer, MATMUL_TILE};
use crate::model::{Config, RopeLayout, Weights};
use crate::tensor::{DType, HostTensor, GPU_INTERLEAVE};

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
        let row_bytes = t.dtype.gpu_row_bytes(t.cols) as u64;
        // Parts hold whole groups of interleaved rows.
        let il = GPU_INTERLEAVE;
        let rows_per_part = (max_bytes / row_bytes) as usize / il * il;
        if rows_per_part == 0 {
            return Err(Error::gpu(format!(
                "tensor {}: {il} rows take {} bytes, more than the adapter's storage binding limit of {max_bytes} bytes (max_storage_buffer_binding_size)",
                t.name,
                row_bytes * il as u64
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
}

struct GpuLayer {
    attn_norm: GpuBuffer,
    wq: GpuMatrix,
    wk: GpuMatrix,
    wv: GpuMatrix,
    bq: Option<GpuBuffer>,
    bk: Option<GpuBuffer>,
    bv: Option<GpuBuffer>,
    wo: GpuMatrix,
    ffn_norm: GpuBuffer,
    gate: GpuMatrix,
    up: GpuMatrix,
    down: GpuMatrix,
}

/// A model's weights on the GPU, shared by any number of sessions.
pub struct GpuModel {
    pub gpu: Arc<Gpu>,
    pub config: Config,
    embed: GpuMatrix,
    head: Option<GpuMatrix>,
    layers: Vec<GpuLayer>,
    final_norm: GpuBuffer,
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
        let mat = |t: &HostTensor| GpuMatrix::upload_limited(&gpu, t, max_bytes);
        let vec = |t: &HostTensor| gpu.storage_init(&t.name, &t.data);
        let opt = |t: &Option<HostTensor>| t.as_ref().map(vec).transpose();
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(GpuLayer {
                attn_norm: vec(&l.attn_norm)?,
                wq: mat(&l.wq)?,
                wk: mat(&l.wk)?,
                wv: mat(&l.wv)?,
                bq: opt(&l.bq)?,
                bk: opt(&l.bk)?,
                bv: opt(&l.bv)?,
                wo: mat(&l.wo)?,
                ffn_norm: vec(&l.ffn_norm)?,
                gate: mat(&l.w_gate)?,
                up: mat(&l.w_up)?,
                down: mat(&l.w_down)?,
            });
        }
        Ok(GpuModel {
            config: config.clone(),
            embed: mat(&w.embed)?,
            head: w.lm_head.as_ref().map(mat).transpose()?,
            layers,
            final_norm: vec(&w.final_norm)?,
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

/// How many workgroups a dispatch needs for a block of T tokens.
#[derive(Clone, Copy)]
enum Grid {
    PerToken,
    One,
    Rows(u32),
    Heads(u32),
    Elements(u32),
}

impl Grid {
    fn dims(self, t: u32) -> (u32, u32, u32) {
        match self {
            Grid::PerToken => (t, 1, 1),
            Grid::One => (1, 1, 1),
            Grid::Rows(n) => {
                let tile = if t > 1 { MATMUL_TILE } else { 1 };
                (
                    n.div_ceil(64).min(32768),
                    t.div_ceil(tile),
                    n.div_ceil(64).div_ceil(32768),
                )
            }
            Grid::Heads(h) => (h, t, 1),
            Grid::Elements(per_token) => ((per_token * t).div_ceil(256), 1, 1),
        }
    }
}

struct Op {
    /// What the dispatch computes, for profiles ("matmul", "attention", ...).
    name: &'static str,
    pipeline: wgpu::ComputePipeline,
    /// A variant for blocks of more than one token (the tiled matmul).
    tiled: Option<wgpu::ComputePipeline>,
    bind: wgpu::BindGroup,
    grid: Grid,
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
    logits: GpuBuffer,
    readback: GpuBuffer,
    body: Vec<Op>,
    head_all: Vec<Op>,
    head_last: Vec<Op>,
    submissions: u64,
    dispatches: u64,
    _keep: Vec<GpuBuffer>,
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
        let p = &gpu.pipelines;
        let f = 4u64;
        let tb = max_batch as u64;
        let slots = rule.slots() as u64;
        let (dim, qd, kvd, ffn, vocab) = (
            c.dim as u64,
            c.q_dim() as u64,
            c.kv_dim() as u64,
            c.ffn_dim as u64,
            c.vocab as u64,
        );

        let step = gpu.uniform("step", bytemuck::bytes_of(&Step::zeroed()));
        let step_one = gpu.uniform(
            "step_one",
            bytemuck::bytes_of(&Step {
                t: 1,
                ..Step::zeroed()
            }),
        );
        let tokens = gpu.storage("tokens", tb * 4)?;
        let x = gpu.storage("x", tb * dim * f)?;
        let xn = gpu.storage("xn", tb * dim * f)?;
        let xlast = gpu.storage("xlast", dim * f)?;
        let q = gpu.storage("q", tb * qd * f)?;
        let kb = gpu.storage("k_block", tb * kvd * f)?;
        let vb = gpu.storage("v_block", tb * kvd * f)?;
        let att = gpu.storage("attention_out", tb * qd * f)?;
        let gate = gpu.storage("gate", tb * ffn * f)?;
        let up = gpu.storage("up", tb * ffn * f)?;
        let logits = gpu.storage("logits", tb * vocab * f)?;
        let readback = gpu.readback("logits_readback", tb * vocab * f);
        let dummy = gpu.storage("dummy", 4)?;

        // RoPE angles for every position the cache can hand out, computed once in f64.
        let half = c.head_dim / 2;
        let mut table = Vec::with_capacity(rule.slots() * half * 2);
        for pos in 0..rule.slots() {
            for fr in &c.rope_freqs {
                let a = pos as f64 * fr;
                table.push(a.cos() as f32);
                table.push(a.sin() as f32);
            }
        }
        let rope = gpu.storage_init("rope_table", bytemuck::cast_slice(&table))?;

        let mut keep = Vec::new();
        let mut uni = |label: &str, words: &[u32]| -> wgpu::Buffer {
            let b = gpu.uniform(label, bytemuck::cast_slice(words));
            let raw = b.buffer.clone();
            keep.push(b);
            raw
        };

        let mut body = Vec::new();
        let mut caches = Vec::new();
        // matmul ops for every part of a matrix: Y (+)= X W^T
        let matmul = |name: &'static str,
                      ops: &mut Vec<Op>,
                      uni: &mut dyn FnMut(&str, &[u32]) -> wgpu::Buffer,
                      step: &wgpu::Buffer,
                      m: &GpuMatrix,
                      xin: &wgpu::Buffer,
                      y: &wgpu::Buffer,
                      bias: Option<&GpuBuffer>,
                      accumulate: bool| {
            for (buf, r0, rows) in &m.parts {
                let flags = accumulate as u32 | ((bias.is_some() as u32) << 1);
                let row_words = (m.dtype.gpu_row_bytes(m.cols) / 4) as u32;
                let dims = uni(
                    "matmul_dims",
                    &[
                        m.cols as u32,
                        *rows as u32,
                        m.rows as u32,
                        *r0 as u32,
                        row_words,
                        flags,
                        0,
                        0,
                    ],
                );
                // A part's bias is offset by its first row: only the unsplit case carries a bias.
                let b = bias.map(|b| &b.buffer).unwrap_or(&dummy.buffer);
                let (one, tiled) = p.matmul(m.dtype);
                ops.push(Op {
                    name,
                    pipeline: one.clone(),
                    tiled: Some(tiled.clone()),
                    bind: gpu.bind_group(one, "matmul", &[step, &dims, buf, xin, y, b]),
                    grid: Grid::Rows(*rows as u32),
                });
            }
        };

        // embedding lookup, one op per part
        for (buf, r0, rows) in &model.embed.parts {
            let m = &model.embed;
            let row_words = (m.dtype.gpu_row_bytes(m.cols) / 4) as u32;
            let dims = uni(
                "embed_dims",
                &[c.dim as u32, *r0 as u32, *rows as u32, row_words],
            );
            body.push(Op {
                name: "embed",
                pipeline: p.embed(m.dtype).clone(),
                tiled: None,
                bind: gpu.bind_group(p.embed(m.dtype), "embed", &[&step, &dims, buf, &tokens, &x]),
                grid: Grid::PerToken,
            });
        }
        let norm_dims = uni("norm_dims", &[c.dim as u32, c.norm_eps.to_bits(), 0, 0]);
        let norm_last_dims = uni(
            "norm_last_dims",
            &[c.dim as u32, c.norm_eps.to_bits(), 1, 0],
        );
        let attn_dims = uni(
            "attention_dims",
            &[
                c.n_heads as u32,
                c.n_kv_heads as u32,
                c.head_dim as u32,
                rule.sinks as u32,
                rule.window as u32,
                (c.rope_layout == RopeLayout::Half) as u32,
                (1.0 / (c.head_dim as f32).sqrt()).to_bits(),
                0,
            ],
        );
        let kv_dims = uni(
            "kv_write_dims",
            &[kvd as u32, rule.sinks as u32, rule.window as u32, 0],
        );
        let silu_dims = uni("silu_dims", &[ffn as u32, 0, 0, 0]);

        for (li, l) in model.layers.iter().enumerate() {
            let kc = gpu.storage(&format!("k_cache_{li}"), slots * kvd * f)?;
            let vc = gpu.storage(&format!("v_cache_{li}"), slots * kvd * f)?;
            let norm = |g: &GpuBuffer, y: &wgpu::Buffer| Op {
                name: "rmsnorm",
                pipeline: p.rmsnorm.clone(),
                tiled: None,
                bind: gpu.bind_group(&p.rmsnorm, "rmsnorm", &[&step, &norm_dims, &x, g, y]),
                grid: Grid::PerToken,
            };
            body.push(norm(&l.attn_norm, &xn));
            if [(&l.bq, &l.wq), (&l.bk, &l.wk), (&l.bv, &l.wv)]
                .iter()
                .any(|(b, m)| b.is_some() && m.part_count() > 1)
            {
                return Err(Error::gpu(
                    "biased projections larger than one storage binding are not supported",
                ));
            }
            matmul(
                "matmul q",
                &mut body,
                &mut uni,
                &step,
                &l.wq,
                &xn,
                &q,
                l.bq.as_ref(),
                false,
            );
            matmul(
                "matmul k",
                &mut body,
                &mut uni,
                &step,
                &l.wk,
                &xn,
                &kb,
                l.bk.as_ref(),
                false,
            );
            matmul(
                "matmul v",
                &mut body,
                &mut uni,
                &step,
                &l.wv,
                &xn,
                &vb,
                l.bv.as_ref(),
                false,
            );
            body.push(Op {
                name: "attention",
                pipeline: p.attention.clone(),
                tiled: None,
                bind: gpu.bind_group(
                    &p.attention,
                    "attention",
                    &[&step, &attn_dims, &q, &kb, &vb, &kc, &vc, &rope, &att],
                ),
                grid: Grid::Heads(c.n_heads as u32),
            });
            body.push(Op {
                name: "kv_write",
                pipeline: p.kv_write.clone(),
                tiled: None,
                bind: gpu.bind_group(
                    &p.kv_write,
                    "kv_write",
                    &[&step, &kv_dims, &kb, &vb, &kc, &vc],
                ),
                grid: Grid::PerToken,
            });
            matmul(
                "matmul o", &mut body, &mut uni, &step, &l.wo, &att, &x, None, true,
            );
            body.push(norm(&l.ffn_norm, &xn));
            matmul(
                "matmul gate",
                &mut body,
                &mut uni,
                &step,
                &l.gate,
                &xn,
                &gate,
                None,
                false,
            );
            matmul(
                "matmul up",
                &mut body,
                &mut uni,
                &step,
                &l.up,
                &xn,
                &up,
                None,
                false,
            );
            body.push(Op {
                name: "silu_mul",
                pipeline: p.silu_mul.clone(),
                tiled: None,
                bind: gpu.bind_group(&p.silu_mul, "silu_mul", &[&step, &silu_dims, &gate, &up]),
                grid: Grid::Elements(ffn as u32),
            });
            matmul(
                "matmul down",
                &mut body,
                &mut uni,
                &step,
                &l.down,
                &gate,
                &x,
                None,
                true,
            );
            caches.push(kc);
            caches.push(vc);
        }

        let mut head_all = vec![Op {
            name: "rmsnorm",
            pipeline: p.rmsnorm.clone(),
            tiled: None,
            bind: gpu.bind_group(
                &p.rmsnorm,
                "final_norm",
                &[&step, &norm_dims, &x, &model.final_norm, &xn],
            ),
            grid: Grid::PerToken,
        }];
        matmul(
            "lm head",
            &mut head_all,
            &mut uni,
            &step,
            model.head(),
            &xn,
            &logits,
            None,
            false,
        );
        let mut head_last = vec![Op {
            name: "rmsnorm",
            pipeline: p.rmsnorm.clone(),
            tiled: None,
            bind: gpu.bind_group(
                &p.rmsnorm,
                "final_norm_last",
                &[&step, &norm_last_dims, &x, &model.final_norm, &xlast],
            ),
            grid: Grid::One,
        }];
        matmul(
            "lm head",
            &mut head_last,
            &mut uni,
            &step_one,
            model.head(),
            &xlast,
            &logits,
            None,
            false,
        );

        keep.extend([
            x, xn, xlast, q, kb, vb, att, gate, up, dummy, rope, step_one,
        ]);
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
            logits,
            readback,
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
        if tokens.is_empty() {
            return Err(Error::invalid("no tokens to feed"));
        }
        let vocab = self.model.config.vocab;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        if let Policy::Recompute { window } = self.policy {
            // Every token: the model re-run over the last W tokens from an empty cache.
            let mut out = Vec::new();
            for &t in tokens {
                self.history.push_back(t);
                if self.history.len() > window {
                    self.history.pop_front();
                }
                self.count = 0;
                let hist: Vec<u32> = self.history.iter().copied().collect();
                let mut last = Vec::new();
                for chunk in hist.chunks(self.max_batch) {
                    last = self.block(chunk, Logits::Last).await?;
                }
                if which == Logits::All {
                    out.extend(last);
                } else {
                    out = last;
                }
            }
            return Ok(out);
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
            let l = self.block(b, w).await?;
            out.extend(l);
        }
        Ok(out)
    }

    /// Native convenience: `feed` blocking on the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn feed_blocking(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        pollster::block_on(self.feed(tokens, which))
    }

    /// Writes the block's uniform (its place in the stream) and its token ids.
    fn write_step(&self, tokens: &[u32]) {
        let gpu = &self.model.gpu;
        let (s, w) = (self.rule.sinks as u64, self.rule.window as u64);
        let n0 = self.count;
        let st = Step {
            t: tokens.len() as u32,
            n0c: n0.min(s + w) as u32,
            head0: ((n0.max(s) - s) % w) as u32,
            sinks_cached: n0.min(s) as u32,
        };
        gpu.queue
            .write_buffer(&self.step, 0, bytemuck::bytes_of(&st));
        gpu.queue
            .write_buffer(&self.tokens, 0, bytemuck::cast_slice(tokens));
    }

    async fn block(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        let gpu = self.model.gpu.clone();
        let t = tokens.len() as u32;
        self.write_step(tokens);
        let head = match which {
            Logits::All => &self.head_all[..],
            Logits::Last => &self.head_last[..],
            Logits::Skip => &[][..],
        };
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("block"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes: None,
            });
            for op in self.body.iter().chain(head) {
                let (x, y, z) = op.grid.dims(t);
                match (&op.tiled, t > 1) {
                    (Some(tiled), true) => pass.set_pipeline(tiled),
                    _ => pass.set_pipeline(&op.pipeline),
                }
                pass.set_bind_group(0, &op.bind, &[]);
                pass.dispatch_workgroups(x, y, z);
                self.dispatches += 1;
            }
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
        read_buffer(&gpu, &self.readback, bytes).await
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
    /// Runs one block like `feed` with `Logits::Last`, but with every dispatch in its own compute
    /// pass bracketed by GPU timestamps; returns the time per kind of dispatch, largest first.
    /// Needs the adapter's TIMESTAMP_QUERY feature (native only).
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
        let ops: Vec<&Op> = self.body.iter().chain(&self.head_last).collect();
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
        let t = tokens.len() as u32;
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("profile"),
            });
        for (i, op) in ops.iter().enumerate() {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(op.name),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &set,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            let (x, y, z) = op.grid.dims(t);
            match (&op.tiled, t > 1) {
                (Some(tiled), true) => pass.set_pipeline(tiled),
                _ => pass.set_pipeline(&op.pipeline),
            }
            pass.set_bind_group(0, &op.bind, &[]);
            pass.dispatch_workgroups(x, y, z);
        }
        enc.resolve_query_set(&set, 0..n, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, n as u64 * 8);
        gpu.queue.submit([enc.finish()]);
        self.count += t as u64;
        let words = pollster::block_on(read_buffer(&gpu, &read, n as u64 * 8))?;
        let stamps: &[u64] = bytemuck::cast_slice(&words);
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        let mut out: Vec<OpTime> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let dt = stamps[2 * i + 1].saturating_sub(stamps[2 * i]) as f64 * period;
            match out.iter_mut().find(|o| o.name == op.name) {
                Some(o) => {
                    o.dispatches += 1;
                    o.seconds += dt;
                }
                None => out.push(OpTime {
                    name: op.name,
                    dispatches: 1,
                    seconds: dt,
                }),
            }
        }
        out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Ok(out)
    }
}

/// Maps `size` bytes of a MAP_READ buffer and copies them out as f32.
async fn read_buffer(gpu: &Gpu, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<f32>> {
    let slot: Arc<
        Mutex<(
            Option<std::result::Result<(), wgpu::BufferAsyncError>>,
            Option<Waker>,
        )>,
    > = Arc::new(Mutex::new((None, None)));
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
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::gpu(format!("the GPU did not finish: {e}")))?;
    let _ = gpu;
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
