//! SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012) over a whole
//! value at once: the `hash` strategy's default keyed hash.
//!
//! One pass over 8-byte words with the state in four locals: no incremental hasher with its
//! tail buffer, which in a plugin costs as much again as the rounds for a short value.

/// A SipHash-2-4 instance under one 128-bit key.
#[derive(Clone)]
pub struct SipHash24 {
    k0: u64,
    k1: u64,
}

impl SipHash24 {
    /// The instance under `key` (two little-endian 64-bit halves, as in the paper).
    pub fn new(key: &[u8; 16]) -> SipHash24 {
        let (k0, k1) = key.split_at(8);
        SipHash24 {
            k0: u64::from_le_bytes(k0.try_into().expect("8 bytes")),
            k1: u64::from_le_bytes(k1.try_into().expect("8 bytes")),
        }
    }

    /// The 64-bit SipHash-2-4 of `message`.
    pub fn hash(&self, message: &[u8]) -> u64 {
        let mut v = [
            self.k0 ^ 0x736f_6d65_7073_6575,
            self.k1 ^ 0x646f_7261_6e64_6f6d,
            self.k0 ^ 0x6c79_6765_6e65_7261,
            self.k1 ^ 0x7465_6462_7974_6573,
        ];
        let words = message.chunks_exact(8);
        let tail = words.remainder();
        for word in words {
            compress(
                &mut v,
                u64::from_le_bytes(word.try_into().expect("8 bytes")),
            );
        }
        // The last word: the remaining bytes, little-endian, and the length's low byte on top.
        let mut last = (message.len() as u64) << 56;
        for (i, &b) in tail.iter().enumerate() {
            last |= u64::from(b) << (8 * i);
        }
        compress(&mut v, last);
        v[2] ^= 0xff;
        for _ in 0..4 {
            round(&mut v);
        }
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }
}

/// One message word through two rounds (the "2" of SipHash-2-4).
#[inline(always)]
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    round(v);
    round(v);
    v[0] ^= m;
}

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_the_papers_vector() {
        // Appendix A: key 00..0f, message 00..0e.
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let message: Vec<u8> = (0..15).collect();
        assert_eq!(SipHash24::new(&key).hash(&message), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn equals_an_independent_implementation_at_every_length() {
        let key: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
        let ours = SipHash24::new(&key);
        let theirs = siphasher::sip::SipHasher24::new_with_key(&key);
        let message: Vec<u8> = (0..200u32).map(|i| (i * 131 % 251) as u8).collect();
        for len in 0..message.len() {
            assert_eq!(
                ours.hash(&message[..len]),
                theirs.hash(&message[..len]),
                "length {len}"
            );
        }
    }
}
