//! A small non-cryptographic PRNG (SplitMix64) for balancing draws, split picks, jitter and request ids: they
//! name or spread requests and guard nothing (as routing.py's `random` and headers.py's getrandbits).

use std::cell::Cell;

pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Different sidecars (and threads) start at different places.
    let local = 0u8;
    t ^ ((&local as *const u8 as u64).rotate_left(32)) ^ u64::from(std::process::id())
}

pub fn u64() -> u64 {
    STATE.with(|s| {
        let mut r = Rng(s.get());
        let v = r.u64();
        s.set(r.0);
        v
    })
}

pub fn f64() -> f64 {
    (u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Uniform in [0, n); 0 when n is 0.
pub fn below(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    ((u64() as u128 * n as u128) >> 64) as usize
}
