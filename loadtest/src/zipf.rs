//! Member choice: uniform, or Zipf (rank k, 1-based, drawn with probability ∝ 1 / k^s).

use rand::Rng;

pub(crate) struct MemberPicker {
    n: usize,
    /// Cumulative probabilities by rank; `None`: uniform.
    cdf: Option<Vec<f64>>,
}

impl MemberPicker {
    pub(crate) fn new(n: usize, zipf_exponent: Option<f64>) -> Self {
        let cdf = zipf_exponent.filter(|s| *s > 0.0).map(|s| {
            let mut cdf = Vec::with_capacity(n);
            let mut sum = 0.0;
            for k in 1..=n {
                sum += 1.0 / (k as f64).powf(s);
                cdf.push(sum);
            }
            for c in &mut cdf {
                *c /= sum;
            }
            cdf
        });
        MemberPicker { n, cdf }
    }

    pub(crate) fn pick<R: Rng>(&self, rng: &mut R) -> usize {
        match &self.cdf {
            None => rng.gen_range(0..self.n),
            Some(cdf) => {
                let u: f64 = rng.gen();
                cdf.partition_point(|&c| c < u).min(self.n - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn zipf_prefers_low_ranks_and_stays_in_range() {
        let picker = MemberPicker::new(1000, Some(1.1));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[picker.pick(&mut rng)] += 1;
        }
        assert!(counts[0] > counts[10] && counts[10] > counts[500]);
        assert!(counts[0] > 10_000, "rank 1 got {}", counts[0]);
    }

    #[test]
    fn uniform_covers_everyone() {
        let picker = MemberPicker::new(10, None);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[picker.pick(&mut rng)] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
