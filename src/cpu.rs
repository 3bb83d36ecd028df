//! The CPU reference: a plain f32 forward pass, one token at a time, that follows the cache rule
//! token by token. Slow and obvious on purpose: it is the oracle every GPU test compares against.

use std::collections::VecDeque;

use crate::cache::{CacheRule, Policy};
use crate::error::{Error, Result};
use crate::model::{Config, RopeLayout, Weights};

struct Layer {
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    wo: Vec<f32>,
    ffn_norm: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
}

/// All weights dequantised to f32.
pub struct CpuModel {
    pub config: Config,
    embed: Vec<f32>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    head: Option<Vec<f32>>,
}

impl CpuModel {
    pub fn new(config: &Config, w: &Weights) -> CpuModel {
        CpuModel {
            config: config.clone(),
            embed: w.embed.to_f32(),
            layers: w
                .layers
                .iter()
                .map(|l| Layer {
                    attn_norm: l.attn_norm.to_f32(),
                    wq: l.wq.to_f32(),
                    wk: l.wk.to_f32(),
                    wv: l.wv.to_f32(),
                    bq: l.bq.as_ref().map(|b| b.to_f32()),
                    bk: l.bk.as_ref().map(|b| b.to_f32()),
                    bv: l.bv.as_ref().map(|b| b.to_f32()),
                    wo: l.wo.to_f32(),
                    ffn_norm: l.ffn_norm.to_f32(),
                    gate: l.w_gate.to_f32(),
                    up: l.w_up.to_f32(),
                    down: l.w_down.to_f32(),
                })
                .collect(),
            norm: w.final_norm.to_f32(),
            head: w.lm_head.as_ref().map(|h| h.to_f32()),
        }
    }
}

/// y = W x (+ b), W is rows x x.len(), split across the machine's cores.
pub fn matvec(w: &[f32], x: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let cols = x.len();
    let rows = w.len() / cols;
    let mut y = vec![0f32; rows];
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = rows.div_ceil(threads).max(1);
    let part = move |i: usize, ys: &mut [f32]| {
        for (j, yv) in ys.iter_mut().enumerate() {
            let r = i * chunk + j;
            let row = &w[r * cols..(r + 1) * cols];
            *yv = row.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        }
    };
    if threads == 1 {
        // One core, or wasm32 (no threads there): no thread to spawn.
        part(0, &mut y);
    } else {
        std::thread::scope(|s| {
            for (i, ys) in y.chunks_mut(chunk).enumerate() {
                s.spawn(move || part(i, ys));
            }
        });
    }
    if let Some(b) = b {
        for (y, b) in y.iter_mut().zip(b) {
            *y += b;
        }
    }
    y
}

pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * inv * w).collect()
}

/// Rotates one head vector in place to position `pos` (angles computed in f64).
pub fn rope(v: &mut [f32], pos: usize, freqs: &[f64], layout: RopeLayout) {
    let half = v.len() / 2;
    for (i, f) in freqs.iter().enumerate() {
        let a = pos as f64 * f;
        let (s, c) = (a.sin() as f32, a.cos() as f32);
        let (i0, i1) = match layout {
            RopeLayout::Adjacent => (2 * i, 2 * i + 1),
            RopeLayout::Half => (i, i + half),
        };
        let (x0, x1) = (v[i0], v[i1]);
        v[i0] = x0 * c - x1 * s;
        v[i1] = x0 * s + x1 * c;
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// A stream through one model under one policy.
pub struct CpuSession<'m> {
    m: &'m CpuModel,
    policy: Policy,
    rule: CacheRule,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    count: u64,
    /// Recompute only: the last W tokens.
    history: VecDeque<u32>,
}

impl<'m> CpuSession<'m> {
    pub fn new(m: &'m CpuModel, policy: Policy) -> Result<CpuSession<'m>> {
        policy.validate()?;
        let rule = policy.rule();
        let size = rule.slots() * m.config.kv_dim();
        Ok(CpuSession {
            m,
            policy,
            rule,
            k: vec![vec![0.0; size]; m.config.n_layers],
            v: vec![vec![0.0; size]; m.config.n_layers],
            count: 0,
            history: VecDeque::new(),
        })
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Feeds one token; returns the logits for the next one.
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        if token as usize >= self.m.config.vocab {
            return Err(Error::invalid(format!(
                "token id {token} is outside the vocabulary"
            )));
        }
        match self.policy {
            Policy::Recompute { window } => {
                self.history.push_back(token);
                if self.history.len() > window {
                    self.history.pop_front();
                }
                // Re-run the model over the last W tokens from an empty cache.
                self.count = 0;
                let toks: Vec<u32> = self.history.iter().copied().collect();
                let mut logits = Vec::new();
                for t in toks {
                    logits = self.forward(t);
                    self.count += 1;
                }
                Ok(logits)
            }
            Policy::Dense { max } if self.count >= max as u64 => Err(Error::CacheFull(format!(
                "the dense cache is full ({max} tokens); raise --max-context or use the sink policy"
            ))),
            _ => {
                let logits = self.forward(token);
                self.count += 1;
                Ok(logits)
            }
        }
    }

    fn forward(&mut self, token: u32) -> Vec<f32> {
        let c = &self.m.config;
        let (hd, kvd) = (c.head_dim, c.kv_dim());
        let n = self.count;
        let slot = self.rule.slot(n);
        let attended: Vec<(u64, usize)> = self.rule.attended(n).collect();
        let qpos = attended.len() - 1;
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();

        let mut x = self.m.embed[token as usize * c.dim..(token as usize + 1) * c.dim].to_vec();
        for (li, l) in self.m.layers.iter().enumerate() {
            let xn = rmsnorm(&x, &l.attn_norm, c.norm_eps);
            let mut q = matvec(&l.wq, &xn, l.bq.as_deref());
            let k = matvec(&l.wk, &xn, l.bk.as_deref());
            let v = matvec(&l.wv, &xn, l.bv.as_deref());
            // Keys are cached before rotation and rotated with their cache position when read.
            self.k[li][slot * kvd..(slot + 1) * kvd].copy_from_slice(&k);
            self.v[li][slot * kvd..(slot + 1) * kvd].copy_from_slice(&v);
            let mut att = vec![0f32; c.q_dim()];
            for h in 0..c.n_heads {
                let kh = h / group;
                let qh = &mut q[h * hd..(h + 1) * hd];
                rope(qh, qpos, &c.rope_freqs, c.rope_layout);
                let mut scores = Vec::with_capacity(attended.len());
                for &(m, p) in &attended {
                    let s = self.rule.slot(m);
                    let mut kk = self.k[li][s * kvd + kh * hd..s * kvd + (kh + 1) * hd].to_vec();
                    rope(&mut kk, p, &c.rope_freqs, c.rope_layout);
                    scores.push(qh.iter().zip(&kk).map(|(a, b)| a * b).sum::<f32>() * scale);
                }
                let mx = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - mx).exp();
                    sum += *s;
                }
                let out = &mut att[h * hd..(h + 1) * hd];
                for (&(m, _), p) in attended.iter().zip(&scores) {
                    let s = self.rule.slot(m);
                    let vv = &self.v[li][s * kvd + kh * hd..s * kvd + (kh + 1) * hd];
                    for (o, vx) in out.iter_mut().zip(vv) {
                        *o += p / sum * vx;
                    }
                }
            }
            let o = matvec(&l.wo, &att, None);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let xn = rmsnorm(&x, &l.ffn_norm, c.norm_eps);
            let g = matvec(&l.gate, &xn, None);
            let u = matvec(&l.up, &xn, None);
            let hmid: Vec<f32> = g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect();
            let d = matvec(&l.down, &hmid, None);
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        let xn = rmsnorm(&x, &self.m.norm, c.norm_eps);
        matvec(self.m.head.as_ref().unwrap_or(&self.m.embed), &xn, None)
    }
}

/// -log softmax(logits)[target], computed in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&l| (l as f64 - mx).exp())
        .sum::<f64>()
        .ln()
        + mx;
    lse - logits[target as usize] as f64
}
