//! Entropy decoding (ITU T.81 F.2, G.2): Huffman tables as libjpeg builds them, the bit reader
//! with its stuffing, marker and restart handling, and one block's share of a sequential or
//! progressive scan, into quantised coefficients in natural order.

use super::{invalid, Result};

/// Position `k` of the zigzag scan → index in the row-major 8×8 block.
pub(super) const ZIGZAG: [usize; 64] = zigzag();

const fn zigzag() -> [usize; 64] {
    let mut order = [0; 64];
    let mut k = 0;
    let mut diagonal = 0; // x + y
    while diagonal < 15 {
        let mut i = 0;
        while i <= diagonal {
            // Even diagonals run from bottom-left to top-right, odd ones the other way.
            let (x, y) = if diagonal % 2 == 0 {
                (i, diagonal - i)
            } else {
                (diagonal - i, i)
            };
            if x < 8 && y < 8 {
                order[k] = y * 8 + x;
                k += 1;
            }
            i += 1;
        }
        diagonal += 1;
    }
    order
}

/// One Huffman table, with a lookup table for codes of up to `FAST_BITS` bits.
pub(super) struct Huffman {
    /// Indexed by the next `FAST_BITS` bits: `(code length << 8) | symbol`, or 0 when the code
    /// is longer.
    fast: [u16; 1 << FAST_BITS],
    /// Largest code of each length (index 1..=16), -1 when there is none.
    max_code: [i32; 17],
    /// `symbol index = code + offset[length]`.
    offset: [i32; 17],
    symbols: Vec<u8>,
}

pub(super) const FAST_BITS: u32 = 9;

impl Huffman {
    /// Builds the canonical code from a DHT segment's 16 code-length counts and its symbols.
    pub(super) fn new(counts: &[u8], symbols: &[u8]) -> Result<Self> {
        let mut table = Self {
            fast: [0; 1 << FAST_BITS],
            max_code: [-1; 17],
            offset: [0; 17],
            symbols: symbols.to_vec(),
        };
        let mut code = 0u32;
        let mut k = 0usize;
        for len in 1..=16u32 {
            let n = usize::from(counts[len as usize - 1]);
            if n > 0 {
                table.offset[len as usize] = k as i32 - code as i32;
                for _ in 0..n {
                    // As libjpeg: codes must fit in `len` bits, and the all-ones code is
                    // reserved.
                    if code + 1 >= 1 << len {
                        return invalid("bad Huffman table (over-subscribed code lengths)");
                    }
                    if len <= FAST_BITS {
                        let first = (code << (FAST_BITS - len)) as usize;
                        let entry = ((len as u16) << 8) | u16::from(symbols[k]);
                        table.fast[first..first + (1 << (FAST_BITS - len))].fill(entry);
                    }
                    code += 1;
                    k += 1;
                }
                table.max_code[len as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        Ok(table)
    }
}

/// Reads the entropy-coded data of one scan, most significant bit first, removing the stuffed
/// zero after each 0xFF. At a marker (or the end of the data) it supplies zero bits and, once
/// such a bit is consumed, reports itself `exhausted`: libjpeg then stops decoding until the next
/// restart marker (the blocks keep what they had: zeros, or an earlier scan's coefficients).
/// Restart markers are consumed by [`Bits::restart`].
pub(super) struct Bits<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    /// Buffered bits, left-aligned.
    pub(super) acc: u64,
    /// Number of buffered bits.
    pub(super) n: u32,
    /// How many of the buffered bits came from the data (the rest are zero padding).
    pub(super) real: u32,
    pub(super) exhausted: bool,
}

impl<'a> Bits<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            acc: 0,
            n: 0,
            real: 0,
            exhausted: false,
        }
    }

    /// Tops the buffer up to at least 57 bits.
    pub(super) fn refill(&mut self) {
        while self.n <= 56 {
            let mut byte = 0;
            if self.real == self.n {
                if let Some(&b) = self.data.get(self.pos) {
                    if b != 0xFF {
                        byte = b;
                        self.pos += 1;
                        self.real += 8;
                    } else if self.data.get(self.pos + 1) == Some(&0) {
                        byte = 0xFF;
                        self.pos += 2;
                        self.real += 8;
                    }
                    // Otherwise a marker: stay in front of it and pad with zeros.
                }
            }
            self.acc |= u64::from(byte) << (56 - self.n);
            self.n += 8;
        }
    }

    #[inline]
    pub(super) fn consume(&mut self, count: u32) {
        self.acc <<= count;
        self.n -= count;
        if count > self.real {
            self.exhausted = true;
            self.real = 0;
        } else {
            self.real -= count;
        }
    }

    /// The next `count` (0..=16) bits as an unsigned number.
    #[inline]
    pub(super) fn bits(&mut self, count: u32) -> u32 {
        if count == 0 {
            return 0;
        }
        if self.n < count {
            self.refill();
        }
        let v = (self.acc >> (64 - count)) as u32;
        self.consume(count);
        v
    }

    #[inline]
    pub(super) fn bit(&mut self) -> bool {
        self.bits(1) != 0
    }

    /// `count` bits read as a signed magnitude category value (T.81 F.2.2.1 EXTEND).
    #[inline]
    pub(super) fn signed(&mut self, count: u32) -> i32 {
        if count == 0 {
            return 0;
        }
        let v = self.bits(count) as i32;
        if v < 1 << (count - 1) {
            v - (1 << count) + 1
        } else {
            v
        }
    }

    /// The next Huffman-coded symbol. A bit pattern that is no code (corrupt data) gives 0
    /// after 17 bits, as libjpeg does (with a warning, which Pillow ignores).
    #[inline]
    pub(super) fn symbol(&mut self, table: &Huffman) -> u8 {
        if self.n < 17 {
            self.refill();
        }
        let entry = table.fast[(self.acc >> (64 - FAST_BITS)) as usize];
        if entry != 0 {
            self.consume(u32::from(entry >> 8));
            return entry as u8;
        }
        let top = (self.acc >> 48) as i32;
        for len in FAST_BITS + 1..=16 {
            let code = top >> (16 - len);
            if code <= table.max_code[len as usize] {
                self.consume(len);
                let i = code + table.offset[len as usize];
                return table.symbols.get(i as usize).copied().unwrap_or(0);
            }
        }
        // libjpeg gives up when its sentinel (a 17th bit) is reached.
        self.consume(17);
        0
    }

    /// At a restart boundary: drops the buffered bits and skips to just after the next marker
    /// if that is a restart marker (RST0..RST7); then decoding resumes. If another marker comes
    /// first, the reader stays in front of it and remains exhausted.
    pub(super) fn restart(&mut self) {
        self.acc = 0;
        self.n = 0;
        self.real = 0;
        let mut p = self.pos;
        while p + 1 < self.data.len() {
            if self.data[p] == 0xFF && !matches!(self.data[p + 1], 0x00 | 0xFF) {
                if (0xD0..=0xD7).contains(&self.data[p + 1]) {
                    self.pos = p + 2;
                    self.exhausted = false;
                } else {
                    self.pos = p;
                }
                return;
            }
            p += 1;
        }
        self.pos = self.data.len();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Sequential,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

pub(super) struct ScanParams {
    pub(super) kind: Kind,
    pub(super) ss: usize,
    pub(super) se: usize,
    pub(super) al: u32,
}

/// Decodes one block's share of a scan into `blk` (natural order).
///
/// Kept as one function on purpose: it is T.81's decoding procedure (F.2.2, G.1.2) as a single
/// `match` over the five scan kinds, each arm a few lines that share the bit reader and the
/// end-of-band run; split up, the arms would lose the side-by-side reading against the spec.
#[inline]
pub(super) fn decode_block(
    bits: &mut Bits,
    p: &ScanParams,
    dc: &Huffman,
    ac: &Huffman,
    pred: &mut i32,
    blk: &mut [i16],
    eobrun: &mut u32,
) {
    // Corrupt data can run a coefficient index past the band; libjpeg's zigzag table has
    // padding entries there that all point at the last coefficient, and so does `at`.
    let at = |k: usize| ZIGZAG[k.min(63)];
    match p.kind {
        Kind::Sequential => {
            let t = u32::from(bits.symbol(dc)).min(16);
            *pred = pred.wrapping_add(bits.signed(t));
            blk[0] = *pred as i16;
            let mut k = 1;
            while k < 64 {
                let rs = bits.symbol(ac);
                let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
                if s == 0 {
                    if r != 15 {
                        break;
                    }
                    k += 16;
                } else {
                    k += r;
                    blk[at(k)] = bits.signed(s) as i16;
                    k += 1;
                }
            }
        }
        Kind::DcFirst => {
            let t = u32::from(bits.symbol(dc)).min(16);
            *pred = pred.wrapping_add(bits.signed(t));
            blk[0] = pred.wrapping_shl(p.al) as i16;
        }
        Kind::DcRefine => {
            if bits.bit() {
                blk[0] |= 1 << p.al;
            }
        }
        Kind::AcFirst => {
            if *eobrun > 0 {
                *eobrun -= 1;
                return;
            }
            let mut k = p.ss;
            while k <= p.se {
                let rs = bits.symbol(ac);
                let (r, s) = (u32::from(rs >> 4), u32::from(rs & 15));
                if s == 0 {
                    if r < 15 {
                        // End of band here and in the next EOBRUN blocks.
                        *eobrun = (1 << r) - 1 + bits.bits(r);
                        break;
                    }
                    k += 16;
                } else {
                    k += r as usize;
                    blk[at(k)] = bits.signed(s).wrapping_shl(p.al) as i16;
                    k += 1;
                }
            }
        }
        Kind::AcRefine => {
            let plus = 1i16 << p.al;
            let minus = -1i16 << p.al;
            // A correction bit for a coefficient that is already non-zero.
            let refine = |bits: &mut Bits, c: &mut i16| {
                if bits.bit() && *c & plus == 0 {
                    *c = c.wrapping_add(if *c >= 0 { plus } else { minus });
                }
            };
            let mut k = p.ss;
            if *eobrun == 0 {
                while k <= p.se {
                    let rs = bits.symbol(ac);
                    let (mut r, s) = (u32::from(rs >> 4), rs & 15);
                    let mut value = 0;
                    if s != 0 {
                        // (s is 1 in a valid file) a new coefficient of ±1 at this bit.
                        value = if bits.bit() { plus } else { minus };
                    } else if r != 15 {
                        *eobrun = (1 << r) + bits.bits(r);
                        break;
                    }
                    // Skip r zero coefficients, refining the non-zero ones on the way, then
                    // place the new one.
                    while k <= p.se {
                        let c = &mut blk[ZIGZAG[k]];
                        if *c != 0 {
                            refine(bits, c);
                        } else {
                            if r == 0 {
                                break;
                            }
                            r -= 1;
                        }
                        k += 1;
                    }
                    if value != 0 {
                        blk[at(k)] = value;
                    }
                    k += 1;
                }
            }
            if *eobrun > 0 {
                // Inside an end-of-band run: only correction bits for the non-zero ones.
                while k <= p.se {
                    let c = &mut blk[ZIGZAG[k]];
                    if *c != 0 {
                        refine(bits, c);
                    }
                    k += 1;
                }
                *eobrun -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_order() {
        assert_eq!(&ZIGZAG[..10], &[0, 1, 8, 16, 9, 2, 3, 10, 17, 24]);
        assert_eq!(&ZIGZAG[58..], &[61, 54, 47, 55, 62, 63]);
        let mut seen = [false; 64];
        for &i in &ZIGZAG {
            seen[i] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn huffman_tables_like_libjpeg() {
        let mut counts = [0u8; 16];
        // One 1-bit code and two 2-bit codes would use the all-ones code "11": refused.
        counts[0] = 1;
        counts[1] = 2;
        assert!(Huffman::new(&counts, &[1, 2, 3]).is_err());
        // 0 -> 7, 10 -> 8, 110 -> 9.
        counts[1] = 1;
        counts[2] = 1;
        let t = Huffman::new(&counts, &[7, 8, 9]).unwrap();
        let mut bits = Bits::new(&[0b0101_1000]);
        assert_eq!(
            [bits.symbol(&t), bits.symbol(&t), bits.symbol(&t)],
            [7, 8, 9]
        );
        assert!(!bits.exhausted);
        // No code starts with 111: libjpeg gives 0 after 17 bits.
        let mut bits = Bits::new(&[0xE0, 0, 0, 0x5A]);
        assert_eq!(bits.symbol(&t), 0);
        assert_eq!(bits.bits(7), 0);
        assert_eq!(bits.bits(8), 0x5A);
    }

    #[test]
    fn bit_reader_stuffing_markers_and_restarts() {
        let mut bits = Bits::new(&[0xFF, 0x00, 0xAB, 0xFF, 0xD9]);
        assert_eq!(bits.bits(8), 0xFF);
        assert_eq!(bits.bits(8), 0xAB);
        assert!(!bits.exhausted);
        // At the marker: zeros, and the reader is exhausted.
        assert_eq!(bits.bits(8), 0);
        assert!(bits.exhausted);

        let mut bits = Bits::new(&[0b1010_0000, 0xFF, 0xD3, 0x55]);
        assert_eq!(bits.bits(3), 0b101);
        assert_eq!(bits.signed(2), -3);
        bits.restart();
        assert_eq!(bits.bits(8), 0x55);
        assert!(!bits.exhausted);
    }
}
