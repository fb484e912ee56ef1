//! The page-wise memory reads against the byte-by-byte translation they replace.

use reprise_cpu::mmu::peek_translate;
use reprise_cpu::state::{cr0, cr4, efer};
use reprise_cpu::CpuState;
use reprise_devices::GuestRam;

use super::{all_at, bytes_at, MemAddr};

/// Page-table entry bits (present, writable, large page).
const P: u64 = 1;
const RW: u64 = 2;
const PS: u64 = 0x80;

/// 4 MiB of RAM whose data bytes all differ from their neighbours, with 4-level page tables
/// at 0x1000.. mapping, from `BASE`: page 0 to frame 0x20_0000, page 1 not present, page 2
/// to frame 0x20_5000, page 3 outside RAM, and the 2 MiB page from `BASE + 2 MiB` to
/// 0x20_0000 (a large page).
fn machine() -> (GuestRam, CpuState) {
    let mut ram = GuestRam::new(4 << 20).unwrap();
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8 ^ 0x5a).collect();
    assert!(ram.write(0x20_0000, &data));
    let mut put = |pa: u64, v: u64| assert!(ram.write(pa, &v.to_le_bytes()));
    let idx = |level: u32| (BASE >> (12 + 9 * (level - 1))) & 0x1ff;
    put(0x1000 + 8 * idx(4), 0x2000 | P | RW);
    put(0x2000 + 8 * idx(3), 0x3000 | P | RW);
    put(0x3000 + 8 * idx(2), 0x4000 | P | RW);
    put(0x3000 + 8 * (idx(2) + 1), 0x20_0000 | P | RW | PS);
    put(0x4000 + 8 * idx(1), 0x20_0000 | P | RW);
    put(0x4000 + 8 * (idx(1) + 2), 0x20_5000 | P | RW);
    put(0x4000 + 8 * (idx(1) + 3), 0x40_0000_0000 | P | RW);
    let mut s = CpuState {
        cr0: cr0::PE | cr0::PG,
        cr3: 0x1000,
        cr4: cr4::PAE,
        ..CpuState::default()
    };
    s.msr.efer = efer::LME | efer::LMA;
    (ram, s)
}

/// A kernel-half address, as the symbol reader's.
const BASE: u64 = 0xffff_ffff_8120_0000;

/// The reference: each byte translated and read alone.
fn per_byte(ram: &GuestRam, s: &CpuState, at: MemAddr, len: u64) -> Vec<Option<u8>> {
    (0..len)
        .map(|k| {
            let phys = match at {
                MemAddr::Phys(a) => Some(a.wrapping_add(k)),
                MemAddr::Virt { addr, .. } => {
                    peek_translate(s, ram.as_slice(), addr.wrapping_add(k))
                }
            }?;
            ram.get(phys, 1).map(|b| b[0])
        })
        .collect()
}

/// Reads that start and end anywhere in a page, cross page edges, unmapped pages, a page
/// outside RAM and a large page give what translating every byte gives; the all-or-nothing
/// read is that, collected.
#[test]
fn page_wise_reads_match_byte_wise_ones() {
    let (ram, s) = machine();
    let translate = |_: u32, lin: u64| peek_translate(&s, ram.as_slice(), lin);
    let starts = [
        0, 1, 0xff8, 0xfff, 0x1000, 0x1ffc, 0x2000, 0x2ff0, 0x3000, 0x1f_fffc,
    ];
    let lens = [0, 1, 8, 0x10, 0x1000, 0x1001, 0x3000, 0x4000];
    for base in [BASE, BASE + (2 << 20)] {
        for off in starts {
            for len in lens {
                let at = MemAddr::Virt {
                    addr: base + off,
                    cpu: 0,
                };
                let want = per_byte(&ram, &s, at, len);
                assert_eq!(bytes_at(&ram, at, len, translate), want, "{at:?} +{len:#x}");
                let whole: Option<Vec<u8>> = want.into_iter().collect();
                assert_eq!(all_at(&ram, at, len, translate), whole, "{at:?} +{len:#x}");
            }
        }
    }
    // The cases above include readable ones across an edge and unreadable ones.
    let edge = MemAddr::Virt {
        addr: BASE + 0xff8,
        cpu: 0,
    };
    assert!(all_at(&ram, edge, 8, translate).is_some());
    assert!(all_at(&ram, edge, 9, translate).is_none());
}

/// Physical reads: across RAM's end, and wrapping past the top of the address space onto
/// RAM at 0, as the byte-by-byte read did.
#[test]
fn physical_reads_match_byte_wise_ones_at_the_ends() {
    let (ram, s) = machine();
    let never = |_: u32, _: u64| -> Option<u64> { panic!("a physical read translates nothing") };
    for (addr, len) in [
        ((4 << 20) - 0x10, 0x20),
        (u64::MAX - 3, 0x10),
        (u64::MAX - 0x1003, 0x2000),
        (0x1ff0, 0x20),
    ] {
        let at = MemAddr::Phys(addr);
        let want = per_byte(&ram, &s, at, len);
        assert_eq!(bytes_at(&ram, at, len, never), want, "{addr:#x} +{len:#x}");
        let whole: Option<Vec<u8>> = want.into_iter().collect();
        assert_eq!(all_at(&ram, at, len, never), whole, "{addr:#x} +{len:#x}");
    }
}

/// With paging off, a virtual address is its low 32 bits: a read crossing 4 GiB carries on
/// from 0, in runs as byte by byte.
#[test]
fn unpaged_reads_wrap_at_4_gib_as_byte_wise_ones() {
    let (ram, _) = machine();
    let s = CpuState::default();
    let translate = |_: u32, lin: u64| peek_translate(&s, ram.as_slice(), lin);
    let at = MemAddr::Virt {
        addr: 0xffff_fff0,
        cpu: 0,
    };
    let want = per_byte(&ram, &s, at, 0x30);
    assert_eq!(bytes_at(&ram, at, 0x30, translate), want);
    assert!(want[..0x10].iter().all(Option::is_none));
    assert!(want[0x10..].iter().all(Option::is_some));
}
