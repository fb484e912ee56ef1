//! Tests of finding and decoding kallsyms tables, on synthetic tables.

use super::*;
use crate::SymbolClass;

/// Builds a tiny 6.1-style table: each name is one token per character.
fn synthetic(names: &[(&str, u64)], rb: u64) -> Vec<u8> {
    synthetic_with(names, rb, false)
}

/// `seqs`: with `kallsyms_seqs_of_names` between the markers and the token table.
fn synthetic_with(names: &[(&str, u64)], rb: u64, seqs: bool) -> Vec<u8> {
    synthetic_layout(names, rb, seqs, KallsymsLayout::OffsetsFirst)
}

/// A table laid out as `layout` says (with `seqs_of_names` before the token table when
/// `seqs`, as 6.2 and 6.3 have it).
fn synthetic_layout(names: &[(&str, u64)], rb: u64, seqs: bool, layout: KallsymsLayout) -> Vec<u8> {
    let mut out = vec![0xeeu8; 64];
    let pad8 = |out: &mut Vec<u8>| {
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
    };
    let offsets = |out: &mut Vec<u8>| {
        for (_, a) in names {
            // ABSOLUTE_PERCPU: per-CPU offsets as themselves, the rest below the base.
            let stored = if *a < 0xffff_8000_0000_0000 {
                *a as i32
            } else {
                rb.wrapping_sub(1).wrapping_sub(*a) as i32
            };
            out.extend_from_slice(&stored.to_le_bytes());
        }
        pad8(out);
        out.extend_from_slice(&rb.to_le_bytes());
    };
    pad8(&mut out);
    match layout {
        KallsymsLayout::OffsetsFirst => offsets(&mut out),
        KallsymsLayout::Absolute => {
            for (_, a) in names {
                out.extend_from_slice(&a.to_le_bytes());
            }
        }
        KallsymsLayout::OffsetsLast => {}
    }
    out.extend_from_slice(&(names.len() as u32).to_le_bytes());
    pad8(&mut out);
    let names_start = out.len();
    let mut markers = Vec::new();
    for (i, (n, _)) in names.iter().enumerate() {
        if i % 256 == 0 {
            markers.push((out.len() - names_start) as u32);
        }
        out.push(n.len() as u8);
        out.extend_from_slice(n.as_bytes());
    }
    pad8(&mut out);
    for m in &markers {
        out.extend_from_slice(&m.to_le_bytes());
    }
    pad8(&mut out);
    if seqs {
        for i in 0..names.len() as u32 {
            out.extend_from_slice(&i.to_be_bytes()[1..]);
        }
        pad8(&mut out);
    }
    let table = out.len();
    let mut index = Vec::new();
    for t in 0..=255u8 {
        index.push((out.len() - table) as u16);
        if t.is_ascii_graphic() {
            out.push(t);
        } else {
            out.extend_from_slice(b"@@");
        }
        out.push(0);
    }
    pad8(&mut out);
    for i in index {
        out.extend_from_slice(&i.to_le_bytes());
    }
    if layout == KallsymsLayout::OffsetsLast {
        pad8(&mut out);
        offsets(&mut out);
    }
    out.extend_from_slice(&[0xee; 64]);
    out
}

/// `count` synthetic symbols `{prefix}0`, `{prefix}1`, ... at `base`, `step` bytes apart.
fn numbered_names(prefix: &str, count: u64, base: u64, step: u64) -> Vec<(String, u64)> {
    (0..count)
        .map(|i| (format!("{prefix}{i}"), base + step * i))
        .collect()
}

/// `owned` with its names borrowed, as the table builders take them.
fn borrowed(owned: &[(String, u64)]) -> Vec<(&str, u64)> {
    owned.iter().map(|(n, a)| (n.as_str(), *a)).collect()
}

#[test]
fn decodes_every_layout() {
    let rb = 0xffff_ffff_8100_0000;
    // An odd count, so that alignment padding shows.
    let owned = numbered_names("tf", 513, rb, 0x20);
    let names = borrowed(&owned);
    for layout in [
        KallsymsLayout::OffsetsFirst,
        KallsymsLayout::OffsetsLast,
        KallsymsLayout::Absolute,
    ] {
        let k = find(&synthetic_layout(&names, rb, false, layout), 0, "l").unwrap();
        assert_eq!(k.layout, layout);
        assert_eq!(k.table.len(), 513, "{layout:?}");
        assert_eq!(k.table.by_name("f0").unwrap().start, rb, "{layout:?}");
        assert_eq!(k.table.by_name("f512").unwrap().start, rb + 0x20 * 512);
    }
}

#[test]
fn decodes_a_synthetic_table() {
    let rb = 0xffff_ffff_8100_0000;
    let mut names = Vec::new();
    let owned = numbered_names("Tfunc_", 600, rb, 0x10);
    for (n, a) in &owned {
        names.push((n.as_str(), *a));
    }
    names[3].0 = "dsome_data";
    let bytes = synthetic(&names, rb);
    let k = find(&bytes, 0, "synthetic").unwrap();
    assert_eq!(k.num_syms, 600);
    assert_eq!(k.relative_base, rb);
    assert_eq!(k.layout, KallsymsLayout::OffsetsFirst);
    assert_eq!(k.table.by_name("func_599").unwrap().start, rb + 0x10 * 599);
    // The last symbol does not run on to the top of memory.
    assert_eq!(
        k.table.lookup(rb + 0x10 * 599).unwrap().symbol.name,
        "func_599"
    );
    assert_eq!(k.table.lookup(rb + 0x10 * 600), None);
    assert_eq!(k.table.lookup(rb + 0x25).unwrap().to_string(), "func_2+0x5");
    let d = k.table.by_name("some_data").unwrap();
    assert_eq!(d.class, SymbolClass::Data);
    // Found the same at any 8-aligned base address.
    let k2 = find(&bytes, 0x1000, "synthetic").unwrap();
    assert_eq!(k2.table.len(), 600);
    let closure = |addr: u64, buf: &mut [u8]| (0x1000u64, &bytes[..]).read(addr, buf);
    assert_eq!(
        from_guest_memory(&closure, 0x1000, 0x1000 + bytes.len() as u64)
            .unwrap()
            .table
            .len(),
        600
    );
    let mem = (0x4000u64, &bytes[..]);
    let k3 = from_guest_memory(&mem, 0x3000, 0x4000 + bytes.len() as u64).unwrap();
    assert_eq!(k3.table.len(), 600);
}

#[test]
fn decodes_a_table_with_seqs_of_names() {
    let rb = 0xffff_ffff_8100_0000;
    let owned = numbered_names("tf", 1000, rb, 4);
    let names = borrowed(&owned);
    let k = find(&synthetic_with(&names, rb, true), 0, "s").unwrap();
    assert_eq!(k.table.len(), 1000);
    assert_eq!(
        k.table.lookup(rb + 4 * 777 + 1).unwrap().to_string(),
        "f777+0x1"
    );
}

/// Damaged tables (every byte of a small one in turn, and random bytes) give an error or
/// a table, never a panic.
#[test]
fn damage_never_panics() {
    let rb = 0xffff_ffff_8100_0000;
    let owned = numbered_names("Tf", 300, rb, 1);
    let names = borrowed(&owned);
    let bytes = synthetic(&names, rb);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for at in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] = next() as u8;
        let _ = find(&bad, 0, "bad");
        let _ = find(&bad[..at], 0, "bad");
    }
    let noise: Vec<u8> = (0..1 << 16).map(|_| next() as u8).collect();
    assert!(find(&noise, 0, "noise").is_err());
}

#[test]
fn prefers_the_relocated_copy() {
    let link = 0xffff_ffff_8100_0000u64;
    let slide = 0x1f80_0000u64;
    let table = |rb: u64| {
        let owned = numbered_names("Tf", 300, rb, 8);
        let names = borrowed(&owned);
        synthetic(&names, rb)
    };
    // The relocated table first in memory, then a stale link-time copy, and the reverse.
    for relocated_first in [true, false] {
        let (a, b) = (table(link + slide), table(link));
        let mut ram = if relocated_first {
            a.clone()
        } else {
            b.clone()
        };
        ram.extend_from_slice(if relocated_first { &b } else { &a });
        assert_eq!(find_all(&ram, 0, "ram").unwrap().len(), 2);
        let (k, n) = find_running(&ram, 0, "ram").unwrap();
        assert_eq!((k.relative_base, n), (link + slide, 2));
        assert_eq!(k.table.by_name("f7").unwrap().start, link + slide + 56);
    }
}

#[test]
fn per_cpu_variables_are_kept_apart() {
    let rb = 0xffff_ffff_8100_0000;
    let mut names = vec![
        ("Dfixed_percpu_data", 0),
        ("Dcpu_number", 0x20),
        ("drunqueues", 0x1000),
        ("D__per_cpu_end", 0x2000),
        ("T_text", rb),
    ];
    // Enough symbols for two markers.
    let filler: Vec<String> = (0..300).map(|i| format!("tf{i}")).collect();
    for (i, f) in filler.iter().enumerate() {
        names.push((f, rb + 0x100 + i as u64));
    }
    let k = find(&synthetic(&names, rb), 0, "p").unwrap();
    assert_eq!((k.table.len(), k.percpu), (301, 4));
    assert_eq!(k.table.lookup(0x1010), None);
    let cpu2 = k.percpu_at(2, 0xffff_8880_1f00_0000);
    let hit = cpu2.lookup(0xffff_8880_1f00_1040).unwrap();
    assert_eq!(hit.to_string(), "runqueues@cpu2+0x40");
    assert_eq!(
        cpu2.lookup(0xffff_8880_1f00_0010).unwrap().to_string(),
        "fixed_percpu_data@cpu2+0x10"
    );
    // The end of the area does not run on past it.
    assert_eq!(cpu2.lookup(0xffff_8880_1f00_2001), None);
}

#[test]
fn truncated_tables_are_errors() {
    let rb = 0xffff_ffff_8100_0000;
    let owned = numbered_names("Tf", 300, rb, 1);
    let names = borrowed(&owned);
    let bytes = synthetic(&names, rb);
    for cut in [bytes.len() - 100, bytes.len() / 2, 100, 0] {
        let e = find(&bytes[..cut], 0, "cut").unwrap_err().to_string();
        assert!(e.starts_with("cut: no kallsyms table"), "{e}");
    }
    // Scrambled names do not decode to a table either.
    let mut bad = bytes.clone();
    for b in &mut bad[80..2000] {
        *b = b.wrapping_mul(7).wrapping_add(3);
    }
    assert!(find(&bad, 0, "bad").is_err());
}

/// The relative base alone is the one of the table `find` decodes, or the same error:
/// for every layout, and for a table damaged at every byte in turn.
#[test]
fn the_relative_base_alone_is_finds() {
    let rb = 0xffff_ffff_8100_0000;
    let owned = numbered_names("Tf", 300, rb, 8);
    let names = borrowed(&owned);
    let same = |bytes: &[u8]| match (find(bytes, 0, "t"), find_relative_base(bytes, 0, "t")) {
        (Ok(k), Ok(base)) => assert_eq!(k.relative_base, base),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("find: {a:?}, the base alone: {b:?}"),
    };
    for layout in [
        KallsymsLayout::OffsetsFirst,
        KallsymsLayout::OffsetsLast,
        KallsymsLayout::Absolute,
    ] {
        let bytes = synthetic_layout(&names, rb, false, layout);
        assert!(find_relative_base(&bytes, 0, "t").is_ok());
        same(&bytes);
    }
    let bytes = synthetic(&names, rb);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for at in 0..bytes.len() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut bad = bytes.clone();
        bad[at] = seed as u8;
        same(&bad);
        same(&bad[..at]);
    }
}

/// Searching only the pages that are not all zero gives what searching everything gives:
/// tables (a relocated and a stale copy) at page offsets that put their digit runs at
/// page edges, and a lone digit run whose final NUL is the first byte of a zero page.
#[test]
fn searching_the_written_pages_finds_what_searching_all_does() {
    const PAGE: usize = 4096;
    let link = 0xffff_ffff_8100_0000u64;
    let table = |rb: u64| {
        let owned = numbered_names("Tf", 300, rb, 8);
        let names = borrowed(&owned);
        synthetic(&names, rb)
    };
    let a = table(link + 0x1f80_0000);
    let b = table(link);
    let digits_in = |t: &[u8]| memchr::memmem::find(t, DIGITS).unwrap();
    let written = |ram: &[u8]| -> Vec<std::ops::Range<usize>> {
        let mut r: Vec<std::ops::Range<usize>> = Vec::new();
        for (n, page) in ram.chunks(PAGE).enumerate() {
            if page.iter().any(|&x| x != 0) {
                match r.last_mut() {
                    Some(last) if last.end == n * PAGE => last.end = n * PAGE + page.len(),
                    _ => r.push(n * PAGE..n * PAGE + page.len()),
                }
            }
        }
        r
    };
    for shift in [0, 1, 2, 7, 10, 18, 19, 20] {
        let mut ram = vec![0u8; 16 * PAGE];
        // The stale copy's digit run ends up to 7 bytes (its alignment) short of `shift`
        // bytes before a page edge, or across it.
        let at_b = (3 * PAGE - shift - digits_in(&b) - DIGITS.len()) & !7;
        ram[at_b..at_b + b.len()].copy_from_slice(&b);
        let at_a = 9 * PAGE + 8 * shift;
        ram[at_a..at_a + a.len()].copy_from_slice(&a);
        // A digit run alone whose NUL opens an all-zero page.
        let lone = 15 * PAGE - (DIGITS.len() - 1);
        ram[lone..lone + DIGITS.len()].copy_from_slice(DIGITS);
        assert!(ram[15 * PAGE..].iter().all(|&x| x == 0));
        let ranges = written(&ram);
        assert!(ranges.iter().all(|r| r.start % PAGE == 0));
        let all = find_running(&ram, 0, "ram").unwrap();
        let some = find_running_in(&ram, 0, "ram", &ranges).unwrap();
        assert_eq!(all, some, "shift {shift}");
        assert_eq!(all.1, 2);
        // Nothing but the lone run: the same error.
        let mut lone_only = vec![0u8; 16 * PAGE];
        lone_only[lone..lone + DIGITS.len()].copy_from_slice(DIGITS);
        let e = |r: Result<(Kallsyms, usize), SymbolError>| r.unwrap_err().to_string();
        assert_eq!(
            e(find_running(&lone_only, 0, "l")),
            e(find_running_in(&lone_only, 0, "l", &written(&lone_only)))
        );
    }
}
