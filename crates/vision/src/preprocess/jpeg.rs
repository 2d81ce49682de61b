//! A JPEG decoder that gives the same pixels as Pillow, i.e. as libjpeg-turbo with the settings
//! Pillow leaves at their defaults: the `JDCT_ISLOW` integer IDCT, "fancy" chroma upsampling and
//! table-driven YCbCr→RGB, all scans of a progressive file accumulated before the IDCT.
//!
//! Scope: 8-bit Huffman-coded JPEGs, sequential (SOF0/SOF1) and progressive (SOF2), greyscale or
//! three components (YCbCr, or RGB when an Adobe marker or the component ids say so), any
//! integral sampling factors, restart intervals. The rest (CMYK/YCCK, 12-bit, arithmetic coding,
//! lossless, hierarchical, DNL, fractional sampling) is [`JpegError::Unsupported`], for the caller
//! to hand to another decoder.
//!
//! Written from the JPEG specification (ITU T.81) and the algorithms libjpeg documents; each
//! stage reproduces libjpeg-turbo's integer arithmetic:
//! * Huffman decoding to quantised coefficients, with progressive successive approximation;
//! * the Loeffler–Ligtenberg–Moschytz IDCT with 13-bit fixed-point constants, columns first, 2
//!   extra bits kept between the passes, round-half-up descaling, level shift and clamp;
//! * chroma upsampling: triangle filters for 2×1, 2×2 and 1×2 factors (3/4 of the nearer sample,
//!   1/4 of the farther, with libjpeg's alternating rounding biases and replicated edges), plain
//!   replication for other integral factors and for components at most 2 samples wide;
//! * YCbCr→RGB through libjpeg's 16-bit fixed-point tables.
//!
//! Corrupt data is handled as libjpeg handles it where that is cheap (Pillow ignores libjpeg's
//! warnings): a bit pattern that is no Huffman code decodes as 0, data that ends early (or runs
//! into a marker) leaves the remaining blocks until the next restart marker untouched. Not
//! reproduced: libjpeg's block smoothing, which only applies to progressive files whose scans
//! never refine some low-frequency coefficients to full precision, and its resynchronisation on
//! a wrong restart marker.

use std::num::Wrapping;

/// Why a JPEG was not decoded.
#[derive(Debug)]
pub(super) enum JpegError {
    /// A valid file using a feature this decoder does not implement.
    Unsupported(String),
    /// A malformed file.
    Invalid(String),
}

type Result<T> = std::result::Result<T, JpegError>;

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(JpegError::Invalid(msg.into()))
}

fn unsupported<T>(msg: impl Into<String>) -> Result<T> {
    Err(JpegError::Unsupported(msg.into()))
}

/// Largest image decoded, in pixels: Pillow's decompression-bomb error threshold
/// (2 × `Image.MAX_IMAGE_PIXELS`), above which `Image.open` refuses the file. (About what the
/// `image` crate's default 512 MiB allocation limit allowed for RGB.)
const MAX_PIXELS: u64 = 2 * 89_478_485;

/// libjpeg's `JPEG_MAX_DIMENSION`: larger images are refused.
const MAX_DIMENSION: usize = 65_500;

/// Most scans accepted in one file (a progressive file has about 10); bounds the work a
/// malicious file can ask for, since every scan visits every block of its components.
const MAX_SCANS: usize = 1000;

/// Position `k` of the zigzag scan → index in the row-major 8×8 block.
const ZIGZAG: [usize; 64] = zigzag();

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

/// Decodes a JPEG to packed RGB (greyscale is copied to the three channels, as Pillow's
/// `convert('RGB')` does). Returns `(width, height, pixels)`.
pub(super) fn decode(data: &[u8]) -> Result<(u32, u32, Vec<u8>)> {
    let mut d = Decoder::default();
    d.read(data)?;
    d.finish()
}

/// One Huffman table, with a lookup table for codes of up to `FAST_BITS` bits.
struct Huffman {
    /// Indexed by the next `FAST_BITS` bits: `(code length << 8) | symbol`, or 0 when the code
    /// is longer.
    fast: [u16; 1 << FAST_BITS],
    /// Largest code of each length (index 1..=16), -1 when there is none.
    max_code: [i32; 17],
    /// `symbol index = code + offset[length]`.
    offset: [i32; 17],
    symbols: Vec<u8>,
}

const FAST_BITS: u32 = 9;

impl Huffman {
    /// Builds the canonical code from a DHT segment's 16 code-length counts and its symbols.
    fn new(counts: &[u8], symbols: &[u8]) -> Result<Self> {
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
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    /// Buffered bits, left-aligned.
    acc: u64,
    /// Number of buffered bits.
    n: u32,
    /// How many of the buffered bits came from the data (the rest are zero padding).
    real: u32,
    exhausted: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
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
    fn refill(&mut self) {
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
    fn consume(&mut self, count: u32) {
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
    fn bits(&mut self, count: u32) -> u32 {
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
    fn bit(&mut self) -> bool {
        self.bits(1) != 0
    }

    /// `count` bits read as a signed magnitude category value (T.81 F.2.2.1 EXTEND).
    #[inline]
    fn signed(&mut self, count: u32) -> i32 {
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
    fn symbol(&mut self, table: &Huffman) -> u8 {
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
    fn restart(&mut self) {
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

#[derive(Clone)]
struct Component {
    id: u8,
    /// Sampling factors.
    h: usize,
    v: usize,
    /// Quantisation table selector.
    tq: usize,
    /// Samples of the component that belong to the image: ceil(width · h / h_max) etc.
    width: usize,
    height: usize,
    /// Blocks per row / column, padded to whole MCUs.
    blocks_w: usize,
    blocks_h: usize,
    /// Quantised coefficients, 64 per block in natural (row-major) order, blocks row-major.
    coefs: Vec<i16>,
    /// The quantisation table (natural order) as it was at the component's first scan.
    quant: Option<[u16; 64]>,
    dc_pred: i32,
}

#[derive(Default)]
struct Decoder {
    progressive: bool,
    width: usize,
    height: usize,
    components: Vec<Component>,
    mcus_x: usize,
    mcus_y: usize,
    quant: [Option<[u16; 64]>; 4],
    dc_tables: [Option<Huffman>; 4],
    ac_tables: [Option<Huffman>; 4],
    restart_interval: usize,
    saw_jfif: bool,
    adobe_transform: Option<u8>,
    scans: usize,
}

fn u16_at(data: &[u8], at: usize) -> Result<usize> {
    match data.get(at..at + 2) {
        Some(b) => Ok(usize::from(u16::from_be_bytes([b[0], b[1]]))),
        None => invalid("data ends inside a marker segment"),
    }
}

/// Position of the first marker at or after `from` that is not a restart marker: the end of a
/// scan's entropy-coded data.
fn scan_end(data: &[u8], from: usize) -> usize {
    let mut p = from;
    while p + 1 < data.len() {
        if data[p] == 0xFF {
            match data[p + 1] {
                0x00 | 0xD0..=0xD7 => p += 2,
                0xFF => p += 1,
                _ => return p,
            }
        } else {
            p += 1;
        }
    }
    data.len()
}

impl Decoder {
    fn read(&mut self, data: &[u8]) -> Result<()> {
        if data.len() < 2 || data[0] != 0xFF || data[1] != 0xD8 {
            return invalid("no SOI marker at the start");
        }
        let mut p = 2;
        loop {
            // Find the next marker, skipping fill bytes (and, like libjpeg, stray data).
            while p < data.len() && data[p] != 0xFF {
                p += 1;
            }
            while p < data.len() && data[p] == 0xFF {
                p += 1;
            }
            let Some(&marker) = data.get(p) else {
                return invalid("no EOI marker");
            };
            p += 1;
            match marker {
                0xD9 => break,
                0xD8 | 0xD0..=0xD7 | 0x01 => continue,
                _ => {}
            }
            let len = u16_at(data, p)?;
            if len < 2 {
                return invalid(format!("marker 0x{marker:02X}: bad segment length"));
            }
            let Some(seg) = data.get(p + 2..p + len) else {
                return invalid(format!("marker 0x{marker:02X}: segment runs past the end"));
            };
            p += len;
            match marker {
                0xC0..=0xC2 => self.frame(seg, marker == 0xC2)?,
                0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                    return unsupported(format!(
                        "SOF{} (lossless, hierarchical or arithmetic-coded) JPEG",
                        marker - 0xC0
                    ))
                }
                0xC4 => self.huffman_tables(seg)?,
                0xCC => return unsupported("arithmetic-coded JPEG"),
                0xDB => self.quant_tables(seg)?,
                0xDD => {
                    if seg.len() < 2 {
                        return invalid("bad DRI segment");
                    }
                    self.restart_interval = u16_at(seg, 0)?;
                }
                0xDC => return unsupported("DNL marker"),
                0xDA => {
                    let end = scan_end(data, p);
                    self.scan(seg, &data[p..end])?;
                    p = end;
                }
                0xE0 if seg.len() >= 14 && seg.starts_with(b"JFIF\0") => self.saw_jfif = true,
                0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => {
                    self.adobe_transform = Some(seg[11]);
                }
                _ => {} // APPn, COM, others: skipped.
            }
        }
        if self.components.is_empty() {
            return invalid("no frame header (SOF) before EOI");
        }
        if self.scans == 0 {
            return invalid("no scan (SOS) before EOI");
        }
        Ok(())
    }

    fn frame(&mut self, seg: &[u8], progressive: bool) -> Result<()> {
        if !self.components.is_empty() {
            return invalid("more than one frame header");
        }
        if seg.len() < 6 {
            return invalid("bad SOF segment");
        }
        if seg[0] != 8 {
            return unsupported(format!("{}-bit JPEG", seg[0]));
        }
        let height = u16_at(seg, 1)?;
        let width = u16_at(seg, 3)?;
        let n = usize::from(seg[5]);
        if height == 0 {
            return unsupported("image height defined by a DNL marker");
        }
        if width == 0 {
            return invalid("image width is 0");
        }
        if n != 1 && n != 3 {
            return unsupported(format!("JPEG with {n} components"));
        }
        if seg.len() < 6 + 3 * n {
            return invalid("bad SOF segment");
        }
        if width > MAX_DIMENSION || height > MAX_DIMENSION {
            return invalid(format!(
                "image is {width}x{height}; libjpeg refuses sides over {MAX_DIMENSION} pixels"
            ));
        }
        if width as u64 * height as u64 > MAX_PIXELS {
            return invalid(format!(
                "image is {width}x{height}, more than {MAX_PIXELS} pixels (Pillow's \
                 decompression-bomb limit)"
            ));
        }
        let mut comps = Vec::with_capacity(n);
        for c in seg[6..6 + 3 * n].chunks_exact(3) {
            let (h, v) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
                return invalid("bad sampling factors");
            }
            if c[2] > 3 {
                return invalid("bad quantisation table selector");
            }
            if comps.iter().any(|o: &Component| o.id == c[0]) {
                return invalid("duplicate component id");
            }
            comps.push(Component {
                id: c[0],
                h,
                v,
                tq: usize::from(c[2]),
                width: 0,
                height: 0,
                blocks_w: 0,
                blocks_h: 0,
                coefs: Vec::new(),
                quant: None,
                dc_pred: 0,
            });
        }
        let h_max = comps.iter().map(|c| c.h).max().unwrap_or(1);
        let v_max = comps.iter().map(|c| c.v).max().unwrap_or(1);
        if comps.iter().any(|c| h_max % c.h != 0 || v_max % c.v != 0) {
            return unsupported("fractional chroma sampling factors");
        }
        self.mcus_x = width.div_ceil(8 * h_max);
        self.mcus_y = height.div_ceil(8 * v_max);
        for c in &mut comps {
            c.width = (width * c.h).div_ceil(h_max);
            c.height = (height * c.v).div_ceil(v_max);
            c.blocks_w = self.mcus_x * c.h;
            c.blocks_h = self.mcus_y * c.v;
            c.coefs = vec![0; c.blocks_w * c.blocks_h * 64];
        }
        self.width = width;
        self.height = height;
        self.progressive = progressive;
        self.components = comps;
        Ok(())
    }

    fn huffman_tables(&mut self, mut seg: &[u8]) -> Result<()> {
        while !seg.is_empty() {
            if seg.len() < 17 {
                return invalid("bad DHT segment");
            }
            let (class, id) = (seg[0] >> 4, usize::from(seg[0] & 15));
            if class > 1 || id > 3 {
                return invalid("bad Huffman table class or id");
            }
            let counts = &seg[1..17];
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            if total > 256 {
                return invalid("bad Huffman table (more than 256 symbols)");
            }
            let Some(symbols) = seg.get(17..17 + total) else {
                return invalid("bad DHT segment");
            };
            let table = Huffman::new(counts, symbols)?;
            if class == 0 {
                self.dc_tables[id] = Some(table);
            } else {
                self.ac_tables[id] = Some(table);
            }
            seg = &seg[17 + total..];
        }
        Ok(())
    }

    fn quant_tables(&mut self, mut seg: &[u8]) -> Result<()> {
        while !seg.is_empty() {
            let (precision, id) = (seg[0] >> 4, usize::from(seg[0] & 15));
            if precision > 1 || id > 3 {
                return invalid("bad quantisation table precision or id");
            }
            let size = 64 << precision;
            let Some(values) = seg.get(1..1 + size) else {
                return invalid("bad DQT segment");
            };
            let mut table = [0u16; 64];
            for k in 0..64 {
                table[ZIGZAG[k]] = if precision == 0 {
                    u16::from(values[k])
                } else {
                    u16::from_be_bytes([values[2 * k], values[2 * k + 1]])
                };
            }
            self.quant[id] = Some(table);
            seg = &seg[1 + size..];
        }
        Ok(())
    }

    fn scan(&mut self, seg: &[u8], entropy: &[u8]) -> Result<()> {
        if self.components.is_empty() {
            return invalid("scan before the frame header");
        }
        self.scans += 1;
        if self.scans > MAX_SCANS {
            return invalid(format!("more than {MAX_SCANS} scans"));
        }
        let n = usize::from(*seg.first().unwrap_or(&0));
        if n == 0 || n > 4 || seg.len() < 1 + 2 * n + 3 {
            return invalid("bad SOS segment");
        }
        let mut in_scan = Vec::with_capacity(n);
        let mut tables = Vec::with_capacity(n);
        for s in seg[1..1 + 2 * n].chunks_exact(2) {
            let Some(ci) = self.components.iter().position(|c| c.id == s[0]) else {
                return invalid("scan names a component that is not in the frame");
            };
            if in_scan.contains(&ci) {
                return invalid("scan names a component twice");
            }
            in_scan.push(ci);
            tables.push((usize::from(s[1] >> 4), usize::from(s[1] & 15)));
        }
        let spectral = &seg[1 + 2 * n..];
        let (ss, se) = (usize::from(spectral[0]), usize::from(spectral[1]));
        let (ah, al) = (u32::from(spectral[2] >> 4), u32::from(spectral[2] & 15));

        let kind = if self.progressive {
            if ss > se || se > 63 || (ss == 0 && se != 0) || (ss > 0 && n != 1) || al > 13 {
                return invalid("bad progressive scan parameters");
            }
            match (ss == 0, ah == 0) {
                (true, true) => Kind::DcFirst,
                (true, false) => Kind::DcRefine,
                (false, true) => Kind::AcFirst,
                (false, false) => Kind::AcRefine,
            }
        } else {
            Kind::Sequential
        };
        if n > 1 {
            let blocks: usize = in_scan
                .iter()
                .map(|&c| self.components[c].h * self.components[c].v)
                .sum();
            if blocks > 10 {
                return invalid("too many blocks per MCU");
            }
        }
        // The tables this scan needs.
        let mut dc: Vec<&Huffman> = Vec::new();
        let mut ac: Vec<&Huffman> = Vec::new();
        for &(td, ta) in &tables {
            if matches!(kind, Kind::Sequential | Kind::DcFirst) {
                match self.dc_tables.get(td).and_then(Option::as_ref) {
                    Some(t) => dc.push(t),
                    None => return invalid("scan uses an undefined DC Huffman table"),
                }
            }
            if matches!(kind, Kind::Sequential | Kind::AcFirst | Kind::AcRefine) {
                match self.ac_tables.get(ta).and_then(Option::as_ref) {
                    Some(t) => ac.push(t),
                    None => return invalid("scan uses an undefined AC Huffman table"),
                }
            }
        }
        // libjpeg latches each component's quantisation table at its first scan.
        for &ci in &in_scan {
            let c = &mut self.components[ci];
            if c.quant.is_none() {
                match self.quant[c.tq] {
                    Some(q) => c.quant = Some(q),
                    None => return invalid("component uses an undefined quantisation table"),
                }
            }
            c.dc_pred = 0;
        }

        let params = ScanParams { kind, ss, se, al };
        // Stands in for the table a scan kind does not use.
        let none = Huffman::new(&[0; 16], &[])?;
        let mut bits = Bits::new(entropy);
        let mut eobrun = 0u32;
        let restart = self.restart_interval;
        let mut count = 0usize;
        let mut at_restart = |bits: &mut Bits, eobrun: &mut u32, comps: &mut [Component]| {
            if restart > 0 && count > 0 && count.is_multiple_of(restart) {
                bits.restart();
                *eobrun = 0;
                for &ci in &in_scan {
                    comps[ci].dc_pred = 0;
                }
            }
            count += 1;
        };
        let comps = &mut self.components;
        if n == 1 {
            // Non-interleaved: the component's own block grid, without MCU padding.
            let ci = in_scan[0];
            let (w, h) = (comps[ci].width.div_ceil(8), comps[ci].height.div_ceil(8));
            for by in 0..h {
                for bx in 0..w {
                    at_restart(&mut bits, &mut eobrun, comps);
                    if bits.exhausted {
                        continue;
                    }
                    let c = &mut comps[ci];
                    let at = (by * c.blocks_w + bx) * 64;
                    decode_block(
                        &mut bits,
                        &params,
                        dc.first().copied().unwrap_or(&none),
                        ac.first().copied().unwrap_or(&none),
                        &mut c.dc_pred,
                        &mut c.coefs[at..at + 64],
                        &mut eobrun,
                    );
                }
            }
        } else {
            for my in 0..self.mcus_y {
                for mx in 0..self.mcus_x {
                    at_restart(&mut bits, &mut eobrun, comps);
                    if bits.exhausted {
                        continue;
                    }
                    for (i, &ci) in in_scan.iter().enumerate() {
                        let c = &mut comps[ci];
                        for v in 0..c.v {
                            for h in 0..c.h {
                                let at = ((my * c.v + v) * c.blocks_w + mx * c.h + h) * 64;
                                decode_block(
                                    &mut bits,
                                    &params,
                                    dc.get(i).copied().unwrap_or(&none),
                                    ac.get(i).copied().unwrap_or(&none),
                                    &mut c.dc_pred,
                                    &mut c.coefs[at..at + 64],
                                    &mut eobrun,
                                );
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// IDCT, upsampling and colour conversion.
    fn finish(mut self) -> Result<(u32, u32, Vec<u8>)> {
        let (width, height) = (self.width, self.height);
        let mut planes = Vec::with_capacity(self.components.len());
        for c in &mut self.components {
            // A component that no scan covered has no latched table; libjpeg then uses zero
            // multipliers, which gives mid-grey.
            let q = c.quant.as_ref().unwrap_or(&[0; 64]);
            let stride = c.blocks_w * 8;
            let mut plane = vec![0u8; stride * c.blocks_h * 8];
            for by in 0..c.blocks_h {
                for bx in 0..c.blocks_w {
                    let at = (by * c.blocks_w + bx) * 64;
                    let block: &[i16; 64] = c.coefs[at..at + 64].try_into().expect("64");
                    idct_islow(block, q, &mut plane[by * 8 * stride + bx * 8..], stride);
                }
            }
            c.coefs = Vec::new();
            planes.push(plane);
        }
        let mut out = vec![0u8; width * height * 3];
        if self.components.len() == 1 {
            let stride = self.components[0].blocks_w * 8;
            for (y, row) in out.chunks_exact_mut(width * 3).enumerate() {
                for (px, &v) in row
                    .chunks_exact_mut(3)
                    .zip(&planes[0][y * stride..y * stride + width])
                {
                    px.fill(v);
                }
            }
            return Ok((width as u32, height as u32, out));
        }
        let ids: Vec<u8> = self.components.iter().map(|c| c.id).collect();
        let rgb = if self.saw_jfif {
            false
        } else if let Some(t) = self.adobe_transform {
            t == 0
        } else {
            ids == [b'R', b'G', b'B']
        };
        let h_max = self.components.iter().map(|c| c.h).max().unwrap_or(1);
        let v_max = self.components.iter().map(|c| c.v).max().unwrap_or(1);
        let mut rows: Vec<Vec<u8>> = vec![vec![0u8; width + 16]; 3];
        for (y, out_row) in out.chunks_exact_mut(width * 3).enumerate() {
            for ((c, plane), row) in self.components.iter().zip(&planes).zip(&mut rows) {
                upsample_row(c, plane, h_max / c.h, v_max / c.v, y, row);
            }
            if rgb {
                for (x, px) in out_row.chunks_exact_mut(3).enumerate() {
                    px.copy_from_slice(&[rows[0][x], rows[1][x], rows[2][x]]);
                }
            } else {
                ycc_to_rgb(
                    &rows[0][..width],
                    &rows[1][..width],
                    &rows[2][..width],
                    out_row,
                );
            }
        }
        Ok((width as u32, height as u32, out))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sequential,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

struct ScanParams {
    kind: Kind,
    ss: usize,
    se: usize,
    al: u32,
}

/// Decodes one block's share of a scan into `blk` (natural order).
#[inline]
fn decode_block(
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

/// libjpeg's `jpeg_idct_islow`: dequantise, then the LL&M 1-D IDCT on columns (results kept
/// with `PASS1_BITS` extra bits) and on rows, with `CONST_BITS`-bit fixed-point constants and
/// round-half-up descaling; the result is level-shifted by 128 and clamped to 0..=255 (as
/// libjpeg-turbo's SIMD versions do; the C version wraps values more than 384 out of range,
/// which valid files do not produce). Writes 8 rows of 8 samples, `stride` apart.
fn idct_islow(coef: &[i16; 64], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    const CONST_BITS: u32 = 13;
    const PASS1_BITS: u32 = 2;
    type W = Wrapping<i32>;
    // FIX(x) = round(x · 2^13).
    const F0_298: W = Wrapping(2446);
    const F0_390: W = Wrapping(3196);
    const F0_541: W = Wrapping(4433);
    const F0_765: W = Wrapping(6270);
    const F0_899: W = Wrapping(7373);
    const F1_175: W = Wrapping(9633);
    const F1_501: W = Wrapping(12299);
    const F1_847: W = Wrapping(15137);
    const F1_961: W = Wrapping(16069);
    const F2_053: W = Wrapping(16819);
    const F2_562: W = Wrapping(20995);
    const F3_072: W = Wrapping(25172);

    /// One 1-D pass on `x[0..8]`; returns the 8 outputs before descaling, and the rounding is
    /// left to the caller.
    #[inline(always)]
    fn idct1d(x: [W; 8]) -> [W; 8] {
        // Even part.
        let z1 = (x[2] + x[6]) * F0_541;
        let tmp2 = z1 - x[6] * F1_847;
        let tmp3 = z1 + x[2] * F0_765;
        let tmp0 = (x[0] + x[4]) << CONST_BITS as usize;
        let tmp1 = (x[0] - x[4]) << CONST_BITS as usize;
        let (t10, t13) = (tmp0 + tmp3, tmp0 - tmp3);
        let (t11, t12) = (tmp1 + tmp2, tmp1 - tmp2);
        // Odd part.
        let (o0, o1, o2, o3) = (x[7], x[5], x[3], x[1]);
        let (z1, z2, z3, z4) = (o0 + o3, o1 + o2, o0 + o2, o1 + o3);
        let z5 = (z3 + z4) * F1_175;
        let (o0, o1, o2, o3) = (o0 * F0_298, o1 * F2_053, o2 * F3_072, o3 * F1_501);
        let (z1, z2) = (-(z1 * F0_899), -(z2 * F2_562));
        let z3 = z5 - z3 * F1_961;
        let z4 = z5 - z4 * F0_390;
        let (o0, o1, o2, o3) = (o0 + z1 + z3, o1 + z2 + z4, o2 + z2 + z3, o3 + z1 + z4);
        [
            t10 + o3,
            t11 + o2,
            t12 + o1,
            t13 + o0,
            t13 - o0,
            t12 - o1,
            t11 - o2,
            t10 - o3,
        ]
    }

    // Descaling of pass 2 (with the 3 bits of the 8-point DCT's scale); the result is
    // level-shifted and clamped.
    const SHIFT: u32 = CONST_BITS + PASS1_BITS + 3;
    let sample = |v: W| {
        ((v + Wrapping(1 << (SHIFT - 1))) >> SHIFT as usize)
            .0
            .saturating_add(128)
            .clamp(0, 255) as u8
    };

    if coef[1..].iter().all(|&c| c == 0) {
        // DC only (common): both passes reduce to the DC term, the same arithmetic as below.
        let dc = Wrapping(i32::from(coef[0])) * Wrapping(i32::from(quant[0] as i16));
        let v = sample((dc << PASS1_BITS as usize) << CONST_BITS as usize);
        for r in 0..8 {
            out[r * stride..r * stride + 8].fill(v);
        }
        return;
    }

    let mut ws = [Wrapping(0i32); 64];
    // Pass 1: columns.
    for c in 0..8 {
        let x: [W; 8] = std::array::from_fn(|r| {
            // libjpeg keeps the multipliers as 16-bit signed values.
            Wrapping(i32::from(coef[r * 8 + c])) * Wrapping(i32::from(quant[r * 8 + c] as i16))
        });
        if (1..8).all(|r| coef[r * 8 + c] == 0) {
            // Same result as the full pass (nothing to round), as in libjpeg.
            let dc = x[0] << PASS1_BITS as usize;
            for r in 0..8 {
                ws[r * 8 + c] = dc;
            }
            continue;
        }
        let y = idct1d(x);
        const SHIFT1: u32 = CONST_BITS - PASS1_BITS;
        for r in 0..8 {
            ws[r * 8 + c] = (y[r] + Wrapping(1 << (SHIFT1 - 1))) >> SHIFT1 as usize;
        }
    }
    // Pass 2: rows.
    for r in 0..8 {
        let x: [W; 8] = ws[r * 8..r * 8 + 8].try_into().expect("8");
        let y = idct1d(x);
        for (o, v) in out[r * stride..r * stride + 8].iter_mut().zip(y) {
            *o = sample(v);
        }
    }
}

/// Row `y` of component `c` upsampled by (`fx`, `fy`) into `out[..c.width * fx]`, as
/// libjpeg-turbo's `jdsample.c` does it with fancy upsampling on.
fn upsample_row(c: &Component, plane: &[u8], fx: usize, fy: usize, y: usize, out: &mut [u8]) {
    let stride = c.blocks_w * 8;
    let w = c.width;
    let last = c.height - 1;
    let iy = (y / fy).min(last);
    let row = |r: usize| &plane[r * stride..r * stride + w];
    let cur = row(iy);
    // libjpeg uses the triangle filters only for components more than 2 samples wide.
    let fancy = w > 2;
    match (fx, fy) {
        (1, 1) => out[..w].copy_from_slice(cur),
        (2, 1) if fancy => {
            // Nearer sample ×3 + farther one; bias 1 towards the left, 2 towards the right.
            out[0] = cur[0];
            out[1] = ((3 * u32::from(cur[0]) + u32::from(cur[1]) + 2) >> 2) as u8;
            for i in 1..w - 1 {
                let c3 = 3 * u32::from(cur[i]);
                out[2 * i] = ((c3 + u32::from(cur[i - 1]) + 1) >> 2) as u8;
                out[2 * i + 1] = ((c3 + u32::from(cur[i + 1]) + 2) >> 2) as u8;
            }
            out[2 * w - 2] = ((3 * u32::from(cur[w - 1]) + u32::from(cur[w - 2]) + 1) >> 2) as u8;
            out[2 * w - 1] = cur[w - 1];
        }
        (2, 2) if fancy => {
            // Vertical: 3 × this row + the nearer neighbour row (the row itself at the edges);
            // horizontal: 3 × this column sum + the neighbouring one, /16 with bias 8 to the
            // left and 7 to the right.
            let near = if y.is_multiple_of(2) {
                row(iy.saturating_sub(1))
            } else {
                row((iy + 1).min(last))
            };
            let sum = |i: usize| 3 * u32::from(cur[i]) + u32::from(near[i]);
            let (mut prev, mut this) = (sum(0), sum(0));
            for i in 0..w {
                let next = if i + 1 < w { sum(i + 1) } else { this };
                if i == 0 {
                    out[0] = ((this * 4 + 8) >> 4) as u8;
                } else {
                    out[2 * i] = ((this * 3 + prev + 8) >> 4) as u8;
                }
                out[2 * i + 1] = if i + 1 < w {
                    ((this * 3 + next + 7) >> 4) as u8
                } else {
                    ((this * 4 + 7) >> 4) as u8
                };
                prev = this;
                this = next;
            }
        }
        (1, 2) if fancy => {
            let (near, bias) = if y.is_multiple_of(2) {
                (row(iy.saturating_sub(1)), 1)
            } else {
                (row((iy + 1).min(last)), 2)
            };
            for ((o, &a), &b) in out.iter_mut().zip(cur).zip(near) {
                *o = ((3 * u32::from(a) + u32::from(b) + bias) >> 2) as u8;
            }
        }
        _ => {
            for (chunk, &v) in out.chunks_exact_mut(fx).zip(cur) {
                chunk.fill(v);
            }
        }
    }
}

/// libjpeg's YCbCr→RGB tables (`jdcolor.c`): 16-bit fixed point, rounded per table entry.
struct ColorTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

const COLOR: ColorTables = color_tables();

const fn color_tables() -> ColorTables {
    const HALF: i32 = 1 << 15;
    // FIX(x) = round(x · 2^16).
    const FIX_1_40200: i32 = 91881;
    const FIX_1_77200: i32 = 116130;
    const FIX_0_71414: i32 = 46802;
    const FIX_0_34414: i32 = 22554;
    let mut t = ColorTables {
        cr_r: [0; 256],
        cb_b: [0; 256],
        cr_g: [0; 256],
        cb_g: [0; 256],
    };
    let mut i = 0;
    while i < 256 {
        let x = i as i32 - 128;
        t.cr_r[i] = (FIX_1_40200 * x + HALF) >> 16;
        t.cb_b[i] = (FIX_1_77200 * x + HALF) >> 16;
        t.cr_g[i] = -FIX_0_71414 * x;
        t.cb_g[i] = -FIX_0_34414 * x + HALF;
        i += 1;
    }
    t
}

fn ycc_to_rgb(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    let t = &COLOR;
    for (((px, &y), &cb), &cr) in out.chunks_exact_mut(3).zip(y).zip(cb).zip(cr) {
        let (y, cb, cr) = (i32::from(y), usize::from(cb), usize::from(cr));
        px[0] = (y + t.cr_r[cr]).clamp(0, 255) as u8;
        px[1] = (y + ((t.cb_g[cb] + t.cr_g[cr]) >> 16)).clamp(0, 255) as u8;
        px[2] = (y + t.cb_b[cb]).clamp(0, 255) as u8;
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

    #[test]
    fn idct_of_a_flat_block() {
        let q = [1u16; 64];
        let mut out = [0u8; 64];
        for (dc, want) in [
            (80, 138),
            (-84, 118),
            (4, 129),
            (3, 128),
            (2000, 255),
            (-2000, 0),
        ] {
            let mut coef = [0i16; 64];
            coef[0] = dc;
            idct_islow(&coef, &q, &mut out, 8);
            assert!(out.iter().all(|&v| v == want), "dc {dc}: {out:?}");
        }
    }

    #[test]
    fn colour_tables() {
        let mut px = [0u8; 3];
        for y in [0u8, 1, 127, 128, 254, 255] {
            ycc_to_rgb(&[y], &[128], &[128], &mut px);
            assert_eq!(px, [y; 3]);
        }
        // R = 128 + round(1.402 · 127) saturates; G = 128 + floor(-0.71414 · 127 + 0.5).
        ycc_to_rgb(&[128], &[128], &[255], &mut px);
        assert_eq!(px, [255, 37, 128]);
    }

    fn component(width: usize, height: usize) -> Component {
        Component {
            id: 2,
            h: 1,
            v: 1,
            tq: 0,
            width,
            height,
            blocks_w: 1,
            blocks_h: 1,
            coefs: Vec::new(),
            quant: None,
            dc_pred: 0,
        }
    }

    #[test]
    fn fancy_upsampling() {
        let mut plane = [0u8; 64];
        plane[..3].copy_from_slice(&[0, 16, 32]);
        plane[8..11].copy_from_slice(&[0, 16, 32]);
        let mut out = [0u8; 8];
        // h2v2: (3·this + neighbour column sums) / 16, biases 8 and 7.
        upsample_row(&component(3, 2), &plane, 2, 2, 0, &mut out);
        assert_eq!(out[..6], [0, 4, 12, 20, 28, 32]);
        // h2v1: (3·this + neighbour) / 4, biases 1 and 2.
        upsample_row(&component(3, 1), &plane, 2, 1, 0, &mut out);
        assert_eq!(out[..6], [0, 4, 12, 20, 28, 32]);
        // Vertical neighbour rows: 3/4 this row + 1/4 the nearer one, biases 1 (above) and 2.
        plane[8..11].copy_from_slice(&[4, 4, 4]);
        upsample_row(&component(3, 2), &plane, 1, 2, 1, &mut out);
        assert_eq!(out[..3], [1, 13, 25]);
        upsample_row(&component(3, 2), &plane, 1, 2, 2, &mut out);
        assert_eq!(out[..3], [3, 7, 11]);
        // At most 2 samples wide: replication.
        upsample_row(&component(2, 2), &plane, 2, 2, 0, &mut out);
        assert_eq!(out[..4], [0, 0, 16, 16]);
    }
}
