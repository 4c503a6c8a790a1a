//! Hashing for ring_hash and maglev (gateway/balancer.py `_ring`, `_maglev`, `request_hash`): a stable 64-bit
//! hash, Envoy's ring construction, the Maglev table with Envoy's weighted fill, and the request's hash from a
//! resolver's hash policies (consul.md §8.5 LoadBalancer.HashPolicies).

use http::HeaderMap;

use super::spec::HashPolicySpec;

/// Primes for the Maglev table (the paper's M >> N rule; Envoy's default 65537).
const MAGLEV_SIZES: [usize; 9] = [251, 509, 1021, 2053, 4099, 8191, 16381, 32771, 65537];

/// A stable 64-bit hash, the same in every process (two sidecars map a key to the same endpoint): FNV-1a
/// with MurmurHash3's finalizer for avalanche.
pub fn hash64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Envoy's ring_hash construction: the lightest endpoint gets at least one point, the ring at least
/// `min_size` points (at most `max_size`), each endpoint hashing `"address:port_i"` for its points.
pub(super) fn ring(
    keys: &[(String, u16)],
    weights: &[u32],
    min_size: u64,
    max_size: u64,
) -> Vec<(u64, u32)> {
    let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
    let normalized: Vec<f64> = weights.iter().map(|w| f64::from(*w) / total).collect();
    let min_norm = normalized.iter().cloned().fold(f64::INFINITY, f64::min);
    let scale = ((min_norm * min_size as f64).ceil() / min_norm).min(max_size as f64);
    let mut points = Vec::new();
    let mut target = 0.0;
    let mut made = 0u64;
    for (idx, ((addr, port), w)) in keys.iter().zip(&normalized).enumerate() {
        target += scale * w;
        let count = (target.floor() as u64).saturating_sub(made);
        made += count;
        for j in 0..count {
            points.push((hash64(format!("{addr}:{port}_{j}").as_bytes()), idx as u32));
        }
    }
    points.sort_unstable();
    if points.is_empty() {
        points.push((0, 0));
    }
    points
}

/// Maglev lookup table (Eisenbud et al., NSDI'16) with Envoy's weighted fill.
pub(super) fn maglev(keys: &[(String, u16)], weights: &[u32]) -> Vec<u32> {
    let n = keys.len();
    let size = MAGLEV_SIZES
        .iter()
        .copied()
        .find(|m| *m >= 100 * n)
        .unwrap_or(MAGLEV_SIZES[MAGLEV_SIZES.len() - 1]);
    let max_w = f64::from(weights.iter().copied().max().unwrap_or(1));
    let mut offsets = Vec::with_capacity(n);
    let mut skips = Vec::with_capacity(n);
    for (addr, port) in keys {
        let name = format!("{addr}:{port}");
        offsets.push((hash64(name.as_bytes()) % size as u64) as usize);
        skips.push((hash64(format!("{name}#skip").as_bytes()) % (size as u64 - 1) + 1) as usize);
    }
    let mut next = vec![0usize; n];
    let mut target = vec![0.0f64; n];
    let mut table = vec![u32::MAX; size];
    let mut filled = 0;
    let mut iteration = 1.0f64;
    while filled < size {
        for i in 0..n {
            if iteration * f64::from(weights[i]) < target[i] {
                continue;
            }
            target[i] += max_w;
            let mut c = (offsets[i] + skips[i] * next[i]) % size;
            while table[c] != u32::MAX {
                next[i] += 1;
                c = (offsets[i] + skips[i] * next[i]) % size;
            }
            table[c] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == size {
                break;
            }
        }
        iteration += 1.0;
    }
    table
}

/// Compiled hash policies of a cluster (ring_hash and maglev).
#[derive(Debug, Clone)]
pub enum HashField {
    Header(http::HeaderName),
    Cookie(String),
    Query(Vec<u8>),
    SourceIp,
}

pub fn compile_hash_policies(specs: &[HashPolicySpec]) -> Vec<(HashField, bool)> {
    specs
        .iter()
        .filter_map(|h| {
            let f = match h.field.as_str() {
                "header" => HashField::Header(
                    http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).ok()?,
                ),
                "cookie" => HashField::Cookie(h.name.clone()),
                "query_parameter" => HashField::Query(h.name.clone().into_bytes()),
                "source_ip" => HashField::SourceIp,
                _ => return None,
            };
            Some((f, h.terminal))
        })
        .collect()
}

/// The request's hash from the policies in order, combined as Envoy does (rotate left by one, XOR the next);
/// a policy without a value is skipped; a terminal policy that produced a hash ends the list.
pub fn request_hash(
    policies: &[(HashField, bool)],
    headers: &HeaderMap,
    query: &[u8],
    peer_ip: &str,
) -> Option<u64> {
    let mut h: Option<u64> = None;
    for (field, terminal) in policies {
        let value: Option<Vec<u8>> = match field {
            HashField::Header(name) => headers.get(name).map(|v| v.as_bytes().to_vec()),
            HashField::Cookie(name) => cookie(headers, name),
            HashField::Query(name) => query.split(|b| *b == b'&').find_map(|part| {
                let (k, v) = match part.iter().position(|b| *b == b'=') {
                    Some(i) => (&part[..i], &part[i + 1..]),
                    None => (part, &b""[..]),
                };
                (k == name.as_slice()).then(|| v.to_vec())
            }),
            HashField::SourceIp => (!peer_ip.is_empty()).then(|| peer_ip.as_bytes().to_vec()),
        };
        let Some(v) = value else { continue };
        let one = hash64(&v);
        h = Some(match h {
            None => one,
            Some(prev) => prev.rotate_left(1) ^ one,
        });
        if *terminal {
            break;
        }
    }
    h
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    for v in headers.get_all(http::header::COOKIE) {
        for part in v.as_bytes().split(|b| *b == b';') {
            let part = part.trim_ascii();
            if let Some(i) = part.iter().position(|b| *b == b'=') {
                if &part[..i] == name.as_bytes() {
                    return Some(part[i + 1..].to_vec());
                }
            }
        }
    }
    None
}
