//! A log-linear latency histogram: 32 sub-buckets per power of two of microseconds, so any
//! percentile is within about 3% of the true value; cheap to record, cheap to merge.

const SUB: usize = 32;
const BUCKETS: usize = 40 * SUB;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    pub max_us: u64,
    pub total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            max_us: 0,
            total: 0,
        }
    }
}

fn index(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize; // >= 5
    let shift = exp - 5;
    let sub = ((us >> shift) as usize) & (SUB - 1);
    ((exp - 4) * SUB + sub).min(BUCKETS - 1)
}

fn lower_bound(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let exp = i / SUB + 4;
    let sub = (i % SUB) as u64;
    (SUB as u64 + sub) << (exp - 5)
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        self.counts[index(us)] += 1;
        self.max_us = self.max_us.max(us);
        self.total += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max_us = self.max_us.max(other.max_us);
        self.total += other.total;
    }

    /// The value at quantile `q` (0..1), in microseconds.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        if rank >= self.total {
            return self.max_us;
        }
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(i).min(self.max_us);
            }
        }
        self.max_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_few_percent() {
        let mut h = Histogram::default();
        for us in 1..=100_000u64 {
            h.record(us);
        }
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.04, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile(1.0), 100_000);
    }
}
