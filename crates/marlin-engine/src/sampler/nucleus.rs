//! The candidates a temperature draw chooses among, and the draw itself, in
//! time linear in the vocabulary.
//!
//! The definition (the GPU's `sample_rows_nucleus` computes the same, bit
//! for bit: same exponential, integer sums):
//! 1. Candidates: the logits that are not NaN; with top-k, the k best by
//!    (logit descending, id ascending), the *rank order*.
//! 2. Weights `w = exp((logit - max) / T)` by [`exp_nonpositive`] (the best
//!    candidate weighs 1), in fixed point: `fx(w) = trunc(w * 2^30)`, so
//!    that every sum is exact and independent of its order (a token below
//!    2^-30 of the best weighs nothing: at most ~1e-4 of the mass of a
//!    128k vocabulary, and only if every token sat just below that).
//!    `Z`: their sum over the candidates.
//! 3. Min-p drops the candidates with `w < min_p` (probability below min_p
//!    times the top probability); `Z` keeps their weight, as llama.cpp does.
//! 4. Top-p keeps the shortest prefix, in rank order, whose weight reaches
//!    `trunc(top_p * Z)` (f64 product; at least one candidate).
//! 5. With `u` uniform in [0, 1) and `K` the kept weight: the first kept
//!    candidate, in id order, whose running weight exceeds `trunc(u * K)`.
//!    (Any fixed order gives the same distribution; id order needs no sort.)
//!
//! Without top-k the candidates are the whole vocabulary (128k-256k entries)
//! and sorting them would cost milliseconds per token. The weights are
//! computed in one vectorised pass, with their sums per strip of the
//! vocabulary; the draw finds its strip from those sums and walks one strip.
//! Only top-p needs rank order: the weights are binned by the top bits of
//! their f32 encoding (monotone for weights in [0, 1]), the bin where the
//! running weight crosses the target is found from the bins' totals, and
//! only that bin's members are ordered, by a weighted quickselect.

use crate::EngineError;

/// A weight's bin: its f32 bits shifted right by this (sign, 8 exponent bits
/// and 3 mantissa bits remain; 1.0 falls in bin 0x3f8).
const BIN_SHIFT: u32 = 20;
/// Bins of weights in [0, 1].
const BINS: usize = 1024;
/// Interleaved histograms: consecutive weights that fall in one bin do not
/// wait for each other's adds.
const LANES: usize = 4;
/// Tokens per strip: the weight pass's unit (its exp and sums run over a
/// cache-resident slice) and the draw's (one strip is walked token by
/// token).
const STRIP: usize = 256;
/// Fixed-point one: weights are summed as `trunc(w * 2^30)` (exact for a
/// weight above 2^-6, whose 24 mantissa bits all fit; 30 bits so that the
/// conversion is the 32-bit one CPUs vectorise). 2^18 tokens of weight 1
/// sum to 2^48, well within u64.
const FX_ONE: f32 = 1_073_741_824.0;

/// A weight in fixed point. `w` must be a weight: in [0, 1], not NaN (what
/// [`exp_nonpositive`] returns); anything else is clamped into it.
#[inline(always)]
pub(crate) fn fx(w: f32) -> u64 {
    // A max/min pair (one vector instruction each; NaN gives 0, where clamp
    // would keep it) instead of `as`'s per-element saturation checks, which
    // keep the conversion scalar.
    #[allow(clippy::manual_clamp)]
    let scaled = (w * FX_ONE).max(0.0).min(FX_ONE);
    // SAFETY: `scaled` is finite and in [0, 2^30], within i32.
    unsafe { scaled.to_int_unchecked::<i32>() as u64 }
}

/// `trunc(a * b)` in f64: the top-p target and the draw's point.
fn fx_scale(a: f32, b: u64) -> u64 {
    (f64::from(a) * b as f64) as u64
}

/// Parameters of one draw, validated by the caller.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DrawParams {
    /// 1 / temperature, finite and > 0.
    pub inv_t: f32,
    /// 0: every candidate.
    pub top_k: usize,
    /// In (0, 1].
    pub top_p: f32,
    /// In [0, 1].
    pub min_p: f32,
}

/// Scratch reused from token to token.
#[derive(Default)]
pub(crate) struct Nucleus {
    /// Dense path: every token's weight, 0 for tokens not kept.
    weights: Vec<f32>,
    /// Dense path: the kept weight of each strip of `weights`.
    strip_sums: Vec<u64>,
    /// Dense path, top-p: LANES histograms of weight by bin, then merged
    /// into the first.
    hist: Vec<[u64; BINS]>,
    /// Dense path, top-p: the members of the bin the cut falls in.
    members: Vec<(u32, f32)>,
    /// Sparse path (top-k): (id, logit), then (id, weight) of the kept
    /// candidates.
    candidates: Vec<(u32, f32)>,
}

/// Where the kept candidates are.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kept {
    /// `candidates`, in id order.
    Sparse,
    /// The weighing entries of `weights`, with `strip_sums`.
    Dense,
}

impl Nucleus {
    /// One token drawn with `u` in [0, 1) (see the module's definition).
    pub(crate) fn choose(
        &mut self,
        logits: &[f32],
        p: &DrawParams,
        u: f32,
    ) -> Result<u32, EngineError> {
        let kept = self.keep(logits, p)?;
        Ok(self.draw(kept, u))
    }

    fn keep(&mut self, logits: &[f32], p: &DrawParams) -> Result<Kept, EngineError> {
        if p.top_k > 0 && p.top_k < logits.len() {
            self.keep_sparse(logits, p)?;
            Ok(Kept::Sparse)
        } else {
            self.keep_dense(logits, p)?;
            Ok(Kept::Dense)
        }
    }

    fn keep_sparse(&mut self, logits: &[f32], p: &DrawParams) -> Result<(), EngineError> {
        top_k_by_logit(logits, p.top_k, &mut self.candidates);
        let max = match self.candidates.first() {
            Some(&(_, l)) if l.is_finite() => l,
            _ => return Err(EngineError::NonFiniteLogits),
        };
        let mut z = 0u64;
        for c in self.candidates.iter_mut() {
            c.1 = exp_nonpositive((c.1 - max) * p.inv_t);
            z += fx(c.1);
        }
        // Min-p and weightless candidates leave the set; rank order stays.
        let floor = p.min_p;
        self.candidates.retain(|c| fx(c.1) > 0 && c.1 >= floor);
        if p.top_p < 1.0 {
            let target = fx_scale(p.top_p, z);
            let mut run = 0u64;
            if let Some(i) = self.candidates.iter().position(|c| {
                run += fx(c.1);
                run >= target
            }) {
                self.candidates.truncate(i + 1);
            }
        }
        self.candidates.sort_unstable_by_key(|c| c.0);
        Ok(())
    }

    fn keep_dense(&mut self, logits: &[f32], p: &DrawParams) -> Result<(), EngineError> {
        let max = max_logit(logits);
        if !max.is_finite() {
            return Err(EngineError::NonFiniteLogits);
        }
        self.weights.clear();
        self.weights.resize(logits.len(), 0.0);
        self.strip_sums.clear();
        let mut z = 0u64;
        for (ls, ws) in logits.chunks(STRIP).zip(self.weights.chunks_mut(STRIP)) {
            let (all, kept) = weigh_strip(ls, ws, max, p.inv_t, p.min_p);
            z += all;
            self.strip_sums.push(kept);
        }
        if p.top_p < 1.0 {
            self.cut_top_p(logits, fx_scale(p.top_p, z));
        }
        Ok(())
    }

    /// Zeroes the weights past the shortest rank-order prefix that reaches
    /// `target` (nothing when the kept weight falls short of it) and
    /// recomputes the strip sums.
    fn cut_top_p(&mut self, logits: &[f32], target: u64) {
        self.hist.clear();
        self.hist.resize(LANES, [0; BINS]);
        histogram(&self.weights, &mut self.hist);
        let hist = &self.hist[0];
        let mut run = 0u64;
        let Some(cut) = (1..BINS).rev().find(|&b| {
            let reached = run + hist[b] >= target;
            if !reached {
                run += hist[b];
            }
            reached
        }) else {
            return;
        };
        gather_bin(&self.weights, cut, &mut self.members);
        let n = prefix_reaching(&mut self.members, logits, target - run);
        // Below the cut: every bin under it, and the bin's members past n.
        let floor_bits = (cut as u32) << BIN_SHIFT;
        for (ws, sum) in self
            .weights
            .chunks_mut(STRIP)
            .zip(self.strip_sums.iter_mut())
        {
            *sum = zero_below(ws, floor_bits);
        }
        for &(id, w) in &self.members[n..] {
            let i = id as usize;
            self.weights[i] = 0.0;
            self.strip_sums[i / STRIP] -= fx(w);
        }
    }

    fn draw(&self, kept: Kept, u: f32) -> u32 {
        if kept == Kept::Sparse {
            let total: u64 = self.candidates.iter().map(|c| fx(c.1)).sum();
            return walk(self.candidates.iter().copied(), fx_scale(u, total))
                .or_else(|| self.candidates.last().map(|c| c.0))
                .unwrap_or(0);
        }
        let total: u64 = self.strip_sums.iter().sum();
        let r = fx_scale(u, total);
        let mut run = 0u64;
        for (s, &sum) in self.strip_sums.iter().enumerate() {
            if run + sum > r {
                let base = s * STRIP;
                let strip = &self.weights[base..(base + STRIP).min(self.weights.len())];
                let tokens = strip
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| ((base + i) as u32, w));
                if let Some(id) = walk(tokens, r - run) {
                    return id;
                }
            }
            run += sum;
        }
        // Not reached: u < 1 makes r < total. The last kept token.
        self.weights
            .iter()
            .rposition(|&w| fx(w) > 0)
            .map_or(0, |i| i as u32)
    }

    /// The kept candidates in id order with their weights (tests).
    #[cfg(test)]
    pub(crate) fn kept_by_id(
        &mut self,
        logits: &[f32],
        p: &DrawParams,
    ) -> Result<Vec<(u32, f32)>, EngineError> {
        Ok(match self.keep(logits, p)? {
            Kept::Sparse => self.candidates.clone(),
            Kept::Dense => self
                .weights
                .iter()
                .enumerate()
                .filter(|&(_, &w)| fx(w) > 0)
                .map(|(i, &w)| (i as u32, w))
                .collect(),
        })
    }
}

/// The first (id, weight) whose running fixed-point weight exceeds `r`.
fn walk(tokens: impl Iterator<Item = (u32, f32)>, r: u64) -> Option<u32> {
    let mut run = 0u64;
    for (id, w) in tokens {
        run += fx(w);
        if run > r {
            return Some(id);
        }
    }
    None
}

/// (logit descending, id ascending) on (id, logit) pairs, -0 equal to +0
/// (`+ 0.0` turns -0 into +0): the order every comparison of logits here
/// keeps (the top-k heap's `l > worst`), and the devices' (the GPU's keys
/// map -0 to +0), so ties of signed zeros go by id everywhere.
fn rank_order(a: (u32, f32), b: (u32, f32)) -> std::cmp::Ordering {
    (b.1 + 0.0).total_cmp(&(a.1 + 0.0)).then(a.0.cmp(&b.0))
}

/// Reorders `m` ((id, weight) pairs) so that `m[..k]` are its first `k` in
/// rank order, for the shortest such prefix whose weight reaches `target`
/// (all of `m` if none does), and returns `k`. A weighted quickselect: each
/// round places the middle element and keeps the half where the target is
/// crossed, so the work is linear, not the sort of a bin that may hold
/// thousands of tokens.
fn prefix_reaching(m: &mut [(u32, f32)], logits: &[f32], target: u64) -> usize {
    let order = |a: &(u32, f32), b: &(u32, f32)| {
        rank_order((a.0, logits[a.0 as usize]), (b.0, logits[b.0 as usize]))
    };
    // m[..lo] precede m[lo..hi] in rank order and weigh `before` < target;
    // m[..hi] reach the target (or hi is the end).
    let (mut lo, mut hi, mut before) = (0usize, m.len(), 0u64);
    while hi - lo > 32 {
        let mid = (hi - lo) / 2;
        m[lo..hi].select_nth_unstable_by(mid, order);
        let upper: u64 = m[lo..=lo + mid].iter().map(|x| fx(x.1)).sum();
        if before + upper >= target {
            hi = lo + mid + 1;
        } else {
            before += upper;
            lo += mid + 1;
        }
    }
    m[lo..hi].sort_unstable_by(order);
    let mut run = before;
    for (i, x) in m[lo..hi].iter().enumerate() {
        run += fx(x.1);
        if run >= target {
            return lo + i + 1;
        }
    }
    hi
}

/// `hist[0][b]` := the fixed-point weight of bin `b` in `weights` (`hist`
/// holds LANES zeroed histograms, merged into the first at the end).
fn histogram(weights: &[f32], hist: &mut [[u64; BINS]]) {
    let Some((first, rest)) = hist.split_first_mut() else {
        return;
    };
    let [a, b, c] = rest else {
        // LANES is 4; a caller with another count gets one lane.
        for &w in weights {
            first[bin(w)] += fx(w);
        }
        return;
    };
    let quads = weights.chunks_exact(LANES);
    for &w in quads.remainder() {
        first[bin(w)] += fx(w);
    }
    for q in quads {
        first[bin(q[0])] += fx(q[0]);
        a[bin(q[1])] += fx(q[1]);
        b[bin(q[2])] += fx(q[2]);
        c[bin(q[3])] += fx(q[3]);
    }
    for lane in [a, b, c] {
        for (f, x) in first.iter_mut().zip(lane.iter()) {
            *f += x;
        }
    }
}

/// `out` := (id, weight) of the weighing tokens in bin `b`, in id order.
fn gather_bin(weights: &[f32], b: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    // Few tokens share a bin: test eight at a time (vector compares) and
    // look at them one by one only then.
    let is_member = |w: f32| fx(w) > 0 && bin(w) == b;
    for (o, chunk) in weights.chunks(8).enumerate() {
        if chunk.iter().fold(false, |any, &w| any | (bin(w) == b)) {
            for (j, &w) in chunk.iter().enumerate() {
                if is_member(w) {
                    out.push(((o * 8 + j) as u32, w));
                }
            }
        }
    }
}

/// Zeroes the weights whose bits are below `floor_bits` (a bin's first
/// encoding; weights are >= 0, so bits compare as the values do) and returns
/// the strip's remaining fixed-point weight.
fn zero_below(ws: &mut [f32], floor_bits: u32) -> u64 {
    for w in ws.iter_mut() {
        if w.to_bits() < floor_bits {
            *w = 0.0;
        }
    }
    sum_fx(ws)
}

fn bin(w: f32) -> usize {
    ((w.to_bits() >> BIN_SHIFT) as usize).min(BINS - 1)
}

/// The k best (id, logit) of `logits` by (logit descending, id ascending),
/// NaN excluded, in that order, into `out`.
fn top_k_by_logit(logits: &[f32], k: usize, out: &mut Vec<(u32, f32)>) {
    use std::collections::BinaryHeap;
    /// Ordered so that the heap's top is the worst kept candidate.
    struct Worst(f32, u32);
    impl PartialEq for Worst {
        fn eq(&self, o: &Self) -> bool {
            self.cmp(o) == std::cmp::Ordering::Equal
        }
    }
    impl Eq for Worst {}
    impl PartialOrd for Worst {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Worst {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            rank_order((self.1, self.0), (o.1, o.0))
        }
    }
    let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(k + 1);
    let mut worst = f32::NEG_INFINITY;
    let offer = |heap: &mut BinaryHeap<Worst>, worst: &mut f32, i: usize, l: f32| {
        if l.is_nan() {
            return;
        }
        if heap.len() < k {
            heap.push(Worst(l, i as u32));
            if heap.len() == k {
                *worst = heap.peek().map_or(f32::NEG_INFINITY, |w| w.0);
            }
        } else if l > *worst {
            // Ids ascend, so an equal logit never beats a kept one.
            if let Some(mut top) = heap.peek_mut() {
                *top = Worst(l, i as u32);
            }
            *worst = heap.peek().map_or(f32::NEG_INFINITY, |w| w.0);
        }
    };
    // Once the heap is full almost no logit beats its worst: test eight at
    // a time (one vector compare) and look at them one by one only then.
    let octets = logits.chunks_exact(8);
    let tail_start = logits.len() - octets.remainder().len();
    for (o, chunk) in octets.enumerate() {
        let full = heap.len() == k;
        if full && !chunk.iter().fold(false, |any, &l| any | (l > worst)) {
            continue;
        }
        for (j, &l) in chunk.iter().enumerate() {
            offer(&mut heap, &mut worst, o * 8 + j, l);
        }
    }
    for (j, &l) in logits[tail_start..].iter().enumerate() {
        offer(&mut heap, &mut worst, tail_start + j, l);
    }
    out.clear();
    out.extend(heap.into_iter().map(|w| (w.1, w.0)));
    out.sort_unstable_by(|a, b| rank_order(*a, *b));
}

/// Whether this CPU runs the AVX2 builds of the passes below (std caches
/// the answer). Both builds compute bit-identical results: Rust never fuses
/// a multiply and an add, so the AVX2 build only has wider vectors.
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Largest logit that is not NaN (-inf when there is none).
pub(crate) fn max_logit(logits: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { max_logit_avx2(logits) };
    }
    max_logit_body(logits)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_logit_avx2(logits: &[f32]) -> f32 {
    max_logit_body(logits)
}

#[inline(always)]
fn max_logit_body(logits: &[f32]) -> f32 {
    // Eight running maxima (one vector register); a NaN compares false and
    // never replaces one.
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = logits.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            if x > *a {
                *a = x;
            }
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in acc.iter().chain(tail) {
        if x > m {
            m = x;
        }
    }
    m
}

/// `ws[i] = exp((ls[i] - max) * inv_t)`, then 0 where that is below
/// `min_p`; returns the strip's fixed-point weight before and after min-p.
fn weigh_strip(ls: &[f32], ws: &mut [f32], max: f32, inv_t: f32, min_p: f32) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { weigh_strip_avx2(ls, ws, max, inv_t, min_p) };
    }
    weigh_strip_body(ls, ws, max, inv_t, min_p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn weigh_strip_avx2(
    ls: &[f32],
    ws: &mut [f32],
    max: f32,
    inv_t: f32,
    min_p: f32,
) -> (u64, u64) {
    weigh_strip_body(ls, ws, max, inv_t, min_p)
}

#[inline(always)]
fn weigh_strip_body(ls: &[f32], ws: &mut [f32], max: f32, inv_t: f32, min_p: f32) -> (u64, u64) {
    for (l, w) in ls.iter().zip(ws.iter_mut()) {
        // NaN and -inf logits weigh 0.
        *w = exp_nonpositive((l - max) * inv_t);
    }
    let all = sum_fx(ws);
    if min_p <= 0.0 {
        return (all, all);
    }
    for w in ws.iter_mut() {
        if *w < min_p {
            *w = 0.0;
        }
    }
    (all, sum_fx(ws))
}

/// The fixed-point sum of `ws`.
#[inline(always)]
fn sum_fx(ws: &[f32]) -> u64 {
    // Eight lanes of 32-bit conversions summed into 64-bit lanes: the form
    // the compiler vectorises.
    let mut acc = [0u64; 8];
    let chunks = ws.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &w) in acc.iter_mut().zip(c) {
            *a += fx(w);
        }
    }
    acc.iter().sum::<u64>() + tail.iter().map(|&w| fx(w)).sum::<u64>()
}

/// `e^x` for `x <= 0` within 2 ulp of `f32::exp`; 0 below -87 (where
/// `e^x` nears the subnormals), for -inf and for NaN. Written without calls
/// or float-to-int conversions so that a loop of it compiles to vector
/// instructions: `n = round(x / ln 2)` by the 1.5 * 2^23 trick (which also
/// leaves `n` in the low mantissa bits), Cody-Waite reduction, the degree-6
/// polynomial of Cephes' `expf`, then `2^n` by bits.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let xc = x.clamp(-87.0, 0.0);
    let t = xc * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // t's bits are 0x4b40_0000 + n; the shift keeps only n + 127 (in
    // 1..=127 for n in -126..=0) as the exponent field.
    let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    if x >= -87.0 {
        y * scale
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, top_k: usize, top_p: f32, min_p: f32) -> DrawParams {
        DrawParams {
            inv_t: 1.0 / t,
            top_k,
            top_p,
            min_p,
        }
    }

    /// A deterministic generator of test logits.
    struct Lcg(u64);
    impl Lcg {
        fn unit(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// The module's definition, by sorting every candidate; the kept ones
    /// in id order.
    fn reference_kept(logits: &[f32], p: &DrawParams) -> Vec<(u32, f32)> {
        let mut c: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        c.sort_by(|a, b| rank_order(*a, *b));
        if p.top_k > 0 {
            c.truncate(p.top_k);
        }
        let max = c[0].1;
        let w: Vec<(u32, f32)> = c
            .iter()
            .map(|&(i, l)| (i, exp_nonpositive((l - max) * p.inv_t)))
            .collect();
        let z: u64 = w.iter().map(|x| fx(x.1)).sum();
        let mut kept: Vec<(u32, f32)> = w
            .into_iter()
            .filter(|x| fx(x.1) > 0 && x.1 >= p.min_p)
            .collect();
        if p.top_p < 1.0 {
            let target = (f64::from(p.top_p) * z as f64) as u64;
            let mut run = 0u64;
            if let Some(i) = kept.iter().position(|x| {
                run += fx(x.1);
                run >= target
            }) {
                kept.truncate(i + 1);
            }
        }
        kept.sort_by_key(|x| x.0);
        kept
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (got, want) = (exp_nonpositive(x), x.exp());
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, libm {want}");
            x -= 0.000_731;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-0.0), 1.0);
        assert_eq!(exp_nonpositive(-88.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(f32::NAN), 0.0);
    }

    #[test]
    fn kept_sets_equal_the_sorting_definition() {
        let mut g = Lcg(7);
        let mut nucleus = Nucleus::default();
        for case in 0..60 {
            let n = [1, 2, 7, 100, 1000, 5000][case % 6];
            // Coarse logits give many ties (equal weights within and across
            // bins); some NaN and -inf entries.
            let spread = [0.5f32, 4.0, 30.0][case % 3];
            let logits: Vec<f32> = (0..n)
                .map(|i| match (i * 7 + case) % 53 {
                    0 if i > 0 => f32::NAN,
                    1 if i > 0 => f32::NEG_INFINITY,
                    _ => (g.unit() * spread * 4.0).round() / 4.0,
                })
                .collect();
            for p in [
                params(1.0, 0, 1.0, 0.0),
                params(0.7, 0, 0.9, 0.0),
                params(1.3, 0, 0.5, 0.05),
                params(0.2, 0, 0.999, 0.0),
                params(1.0, 40, 0.95, 0.05),
                params(2.0, 3, 1.0, 0.0),
                params(1.0, n / 2 + 1, 0.8, 0.0),
            ] {
                let got = nucleus.kept_by_id(&logits, &p).unwrap();
                let want = reference_kept(&logits, &p);
                let ids = |v: &[(u32, f32)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
                assert_eq!(ids(&got), ids(&want), "case {case} n {n} {p:?}");
            }
        }
    }

    #[test]
    fn signed_zeros_tie_and_go_by_id() {
        // Top-2 of zeros of both signs: the lowest ids, whatever the signs
        // (the heap and the sorting definition agree).
        let mut nucleus = Nucleus::default();
        let mut logits = vec![f32::NEG_INFINITY; 20];
        for (i, z) in [(3, -0.0f32), (4, -0.0), (5, 0.0), (17, 0.0)] {
            logits[i] = z;
        }
        for p in [params(1.0, 2, 1.0, 0.0), params(1.0, 3, 0.6, 0.0)] {
            let got = nucleus.kept_by_id(&logits, &p).unwrap();
            let want = reference_kept(&logits, &p);
            let ids = |v: &[(u32, f32)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
            assert_eq!(ids(&got), ids(&want), "{p:?}");
            assert_eq!(ids(&got)[..2], [3, 4], "{p:?}");
        }
    }

    #[test]
    fn the_draw_takes_the_first_candidate_in_id_order_past_u_of_the_mass() {
        let mut g = Lcg(11);
        let mut nucleus = Nucleus::default();
        let logits: Vec<f32> = (0..3000).map(|_| g.unit() * 6.0).collect();
        for p in [
            params(1.0, 0, 1.0, 0.0),
            params(0.8, 0, 0.9, 0.02),
            params(1.0, 50, 0.9, 0.0),
        ] {
            let kept = reference_kept(&logits, &p);
            let total: u64 = kept.iter().map(|x| fx(x.1)).sum();
            for k in 0..200 {
                let u = k as f32 / 200.0 + 0.001;
                let r = (f64::from(u) * total as f64) as u64;
                let mut run = 0u64;
                let want = kept.iter().find(|x| {
                    run += fx(x.1);
                    run > r
                });
                let got = nucleus.choose(&logits, &p, u).unwrap();
                assert_eq!(Some(got), want.map(|x| x.0), "u {u} {p:?}");
            }
            // u = 0 is the kept candidate of the lowest id.
            assert_eq!(nucleus.choose(&logits, &p, 0.0).unwrap(), kept[0].0);
        }
    }

    #[test]
    fn draws_follow_the_probabilities() {
        // Four tokens with probabilities 0.4, 0.3, 0.2, 0.1 among 10^4 that
        // weigh nothing at this temperature.
        let mut logits = vec![-1e4f32; 10_000];
        for (id, prob) in [(17usize, 0.4f32), (3, 0.3), (9000, 0.2), (5000, 0.1)] {
            logits[id] = prob.ln();
        }
        let mut nucleus = Nucleus::default();
        let mut counts = std::collections::HashMap::new();
        let draws = 4000;
        for i in 0..draws {
            let u = (i as f32 + 0.5) / draws as f32;
            *counts
                .entry(
                    nucleus
                        .choose(&logits, &params(1.0, 0, 1.0, 0.0), u)
                        .unwrap(),
                )
                .or_insert(0) += 1;
        }
        for (id, prob) in [(17u32, 0.4f64), (3, 0.3), (9000, 0.2), (5000, 0.1)] {
            let frac = f64::from(counts[&id]) / f64::from(draws);
            assert!((frac - prob).abs() < 2e-3, "id {id}: {frac} for {prob}");
        }
        assert_eq!(counts.len(), 4);
    }

    #[test]
    fn rows_without_a_finite_logit_are_errors() {
        let mut nucleus = Nucleus::default();
        for p in [params(1.0, 0, 1.0, 0.0), params(1.0, 2, 1.0, 0.0)] {
            for logits in [
                vec![f32::NAN; 5],
                vec![f32::NEG_INFINITY; 5],
                vec![1.0, f32::INFINITY, 0.0],
            ] {
                assert!(matches!(
                    nucleus.choose(&logits, &p, 0.5),
                    Err(EngineError::NonFiniteLogits)
                ));
            }
        }
    }
}
