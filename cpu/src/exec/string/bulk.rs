//! The fast path of REP MOVS/STOS moving upwards: a page-sized run of elements at a time,
//! done directly on RAM, and the accesses an observer is told of afterwards (as the element
//! path would have told them). [`super::exec`] falls back to the element path whenever a
//! run cannot be done this way.

use iced_x86::Register;

use super::{accumulator, Op};
use crate::bus::Bus;
use crate::exec::Exec;
use crate::flags::mask;
use crate::observer::Observer;

/// Elements of `size` bytes from offset `off` (address mask `amask`) before either the
/// linear page or the offset wraps, so a run stays inside one page.
fn room(
    x: &Exec<impl Bus, impl Observer>,
    seg: Register,
    off: u64,
    size: usize,
    amask: u64,
) -> u64 {
    let lin = x.linear(seg, off);
    let in_page = (0x1000 - (lin & 0xfff)) / size as u64;
    let to_wrap = ((amask - off) / size as u64).saturating_add(1);
    in_page.min(to_wrap)
}

/// The fast path of REP MOVS/STOS with DF = 0: up to `limit` elements that lie wholly in
/// one RAM page at the source and at the destination, done directly on RAM. Returns how
/// many elements were done; 0 means "take the element-by-element path" (an element
/// straddles a page, a translation faults, or the memory is not plain RAM; with an
/// observer, also a copy whose source and destination overlap), which then raises any
/// fault in the architectural order.
///
/// An observer is told of every element's accesses after the copy, as the element path
/// tells it (the source read, then the destination write, element by element, with the
/// same addresses and values): the source does not overlap the destination, so its bytes
/// are still the ones read.
#[allow(clippy::too_many_arguments)]
pub(super) fn bulk<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    op: Op,
    size: usize,
    amask: u64,
    src_seg: Register,
    si: u64,
    di: u64,
    limit: u64,
) -> u64 {
    use crate::mmu::Intent;
    let mut n = limit.min(room(x, Register::ES, di, size, amask));
    if op == Op::Movs {
        n = n.min(room(x, src_seg, si, size, amask));
    }
    if n == 0 {
        return 0;
    }
    let len = n as usize * size;
    // Translate the source first, as the element path does, so accessed/dirty bits are set
    // in the same order.
    let src_pa = if op == Op::Movs {
        let lin = x.linear(src_seg, si);
        match x.translate(lin, Intent::Read) {
            Ok(pa) => Some(pa),
            Err(_) => return 0,
        }
    } else {
        None
    };
    let dst_lin = x.linear(Register::ES, di);
    let Ok(dst_pa) = x.translate(dst_lin, Intent::Write) else {
        return 0;
    };
    let plain_ram = |x: &mut Exec<B, O>, pa: u64| {
        let end = pa + len as u64;
        !x.bus.is_mmio(pa) && !x.bus.is_mmio(end - 1) && end <= x.bus.ram().len() as u64
    };
    if !plain_ram(x, dst_pa) || src_pa.is_some_and(|pa| !plain_ram(x, pa)) {
        return 0;
    }
    let overlap = src_pa.is_some_and(|s| dst_pa < s + len as u64 && s < dst_pa + len as u64);
    if O::ENABLED && overlap {
        return 0;
    }
    let page = dst_pa >> 12;
    if x.code.is_code_page(page) {
        x.code.invalidate_page(page);
        x.code_modified = true;
    }
    match src_pa {
        None => {
            let v = x.gpr(accumulator(size)).to_le_bytes();
            if let Some(dst) = x.bus.ram().into_slice_mut(dst_pa, len) {
                fill(dst, v, size);
            }
        }
        Some(spa) => {
            let mut ram = x.bus.ram();
            if !overlap {
                ram.copy_within(spa, dst_pa, len);
            } else {
                // Overlapping: copy element by element, upwards, as the instruction does.
                for k in 0..n {
                    let off = k * size as u64;
                    ram.copy_within(spa + off, dst_pa + off, size);
                }
            }
        }
    }
    if O::ENABLED {
        report_bulk(
            x,
            size,
            n,
            src_pa.map(|pa| (x.linear(src_seg, si), pa)),
            dst_lin,
            dst_pa,
        );
    }
    n
}

/// Fill `dst` (a whole number of elements) with the low `size` (1, 2, 4 or 8) bytes of
/// `v`. Each width is its own loop of fixed-size stores: with the width known only at run
/// time, each element's copy was a call to `memcpy` (Linux clears pages with REP STOS:
/// ~1.2% of a boot's run). A pattern of one repeated byte (zeroing) is one `memset`.
fn fill(dst: &mut [u8], v: [u8; 8], size: usize) {
    if v[..size].iter().all(|&b| b == v[0]) {
        dst.fill(v[0]);
        return;
    }
    match size {
        2 => dst
            .chunks_exact_mut(2)
            .for_each(|c| c.copy_from_slice(&v[..2])),
        4 => dst
            .chunks_exact_mut(4)
            .for_each(|c| c.copy_from_slice(&v[..4])),
        _ => dst
            .chunks_exact_mut(8)
            .for_each(|c| c.copy_from_slice(&v[..8])),
    }
}

/// Tell the observer of the `n` elements of `size` bytes [`bulk`] just did, as
/// [`super::element`] would have: for MOVS (`src` = the source's linear and physical address) the
/// read of each source element then the write of its value; for STOS the write of the
/// accumulator. The source of a MOVS did not overlap its destination, so it still holds
/// the values read.
#[inline(never)]
fn report_bulk<B: Bus, O: Observer>(
    x: &mut Exec<B, O>,
    size: usize,
    n: u64,
    src: Option<(u64, u64)>,
    dst_lin: u64,
    dst_pa: u64,
) {
    use crate::observer::AccessKind;
    let stored = x.gpr(accumulator(size)) & mask(size);
    for k in 0..n {
        let off = k * size as u64;
        let v = match src {
            Some((lin, pa)) => {
                let v = crate::exec::memory::ram_load(x.bus.ram(), pa + off, size).unwrap_or(0);
                x.report(lin.wrapping_add(off), pa + off, size, AccessKind::Read, v);
                v
            }
            None => stored,
        };
        x.report(
            dst_lin.wrapping_add(off),
            dst_pa + off,
            size,
            AccessKind::Write,
            v,
        );
    }
}

#[cfg(test)]
mod fill_tests {
    use super::fill;

    /// Every width, with a repeated byte and with a pattern of distinct bytes, writes what
    /// storing the element at each offset would.
    #[test]
    fn fill_writes_the_element_at_every_offset() {
        for size in [1usize, 2, 4, 8] {
            for v in [[0u8; 8], [7; 8], [1, 2, 3, 4, 5, 6, 7, 8]] {
                let mut got = vec![0xeeu8; size * 5];
                fill(&mut got, v, size);
                let want: Vec<u8> = (0..5).flat_map(|_| v[..size].iter().copied()).collect();
                assert_eq!(got, want, "size {size}, pattern {v:?}");
            }
        }
    }
}
