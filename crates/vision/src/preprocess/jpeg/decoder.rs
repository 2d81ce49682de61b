//! The decoder's state machine over the file's markers: frame header, quantisation and Huffman
//! tables, restart interval, each scan's entropy-coded data (decoded into every component's
//! coefficients), and at the end the IDCT, upsampling and colour conversion of [`super::color`].

use super::color::{upsample_row, ycc_to_rgb, Plane};
use super::entropy::{decode_block, Bits, Huffman, Kind, ScanParams, ZIGZAG};
use super::idct::idct_islow;
use super::{invalid, max_pixels, unsupported, Result, MAX_DIMENSION, MAX_SCANS};

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
pub(super) struct Decoder {
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

/// A parsed SOS header ([`Decoder::scan_header`]).
struct ScanHeader {
    /// Indices into the frame's components, in scan order.
    in_scan: Vec<usize>,
    /// (DC, AC) Huffman table selectors, per scanned component.
    tables: Vec<(usize, usize)>,
    params: ScanParams,
}

impl Decoder {
    pub(super) fn read(&mut self, data: &[u8]) -> Result<()> {
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
        if width as u64 * height as u64 > max_pixels() {
            return invalid(format!(
                "image is {width}x{height}, more than {} pixels (Pillow's decompression-bomb \
                 limit; set SIGHTLINE_MAX_IMAGE_PIXELS to raise it)",
                max_pixels()
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

    /// The SOS segment: the scan's components (indices into the frame's), their (DC, AC) table
    /// selectors, and its kind and spectral/approximation parameters, all checked.
    fn scan_header(&self, seg: &[u8]) -> Result<ScanHeader> {
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
        Ok(ScanHeader {
            in_scan,
            tables,
            params: ScanParams { kind, ss, se, al },
        })
    }

    /// One scan: its header, then its entropy-coded data into the coefficients of its
    /// components (interleaved by MCU, or one component's own block grid), with restarts.
    fn scan(&mut self, seg: &[u8], entropy: &[u8]) -> Result<()> {
        if self.components.is_empty() {
            return invalid("scan before the frame header");
        }
        self.scans += 1;
        if self.scans > MAX_SCANS {
            return invalid(format!("more than {MAX_SCANS} scans"));
        }
        let ScanHeader {
            in_scan,
            tables,
            params,
        } = self.scan_header(seg)?;
        let (n, kind) = (in_scan.len(), params.kind);
        let (dc, ac) = huffman_tables_for(&self.dc_tables, &self.ac_tables, kind, &tables)?;
        latch_quant(&mut self.components, &self.quant, &in_scan)?;

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
    pub(super) fn finish(mut self) -> Result<(u32, u32, Vec<u8>)> {
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
                let shape = Plane {
                    width: c.width,
                    height: c.height,
                    stride: c.blocks_w * 8,
                };
                upsample_row(&shape, plane, h_max / c.h, v_max / c.v, y, row);
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

/// The DC and AC Huffman tables a scan of `kind` uses, per scanned component (DC tables only
/// for sequential and first DC scans, AC tables for all but DC scans).
fn huffman_tables_for<'t>(
    dc_tables: &'t [Option<Huffman>; 4],
    ac_tables: &'t [Option<Huffman>; 4],
    kind: Kind,
    selectors: &[(usize, usize)],
) -> Result<(Vec<&'t Huffman>, Vec<&'t Huffman>)> {
    let mut dc: Vec<&Huffman> = Vec::new();
    let mut ac: Vec<&Huffman> = Vec::new();
    for &(td, ta) in selectors {
        if matches!(kind, Kind::Sequential | Kind::DcFirst) {
            match dc_tables.get(td).and_then(Option::as_ref) {
                Some(t) => dc.push(t),
                None => return invalid("scan uses an undefined DC Huffman table"),
            }
        }
        if matches!(kind, Kind::Sequential | Kind::AcFirst | Kind::AcRefine) {
            match ac_tables.get(ta).and_then(Option::as_ref) {
                Some(t) => ac.push(t),
                None => return invalid("scan uses an undefined AC Huffman table"),
            }
        }
    }
    Ok((dc, ac))
}

/// libjpeg latches each component's quantisation table at its first scan; every scan resets
/// the DC predictions of its components.
fn latch_quant(
    components: &mut [Component],
    quant: &[Option<[u16; 64]>; 4],
    in_scan: &[usize],
) -> Result<()> {
    for &ci in in_scan {
        let c = &mut components[ci];
        if c.quant.is_none() {
            match quant[c.tq] {
                Some(q) => c.quant = Some(q),
                None => return invalid("component uses an undefined quantisation table"),
            }
        }
        c.dc_pred = 0;
    }
    Ok(())
}
