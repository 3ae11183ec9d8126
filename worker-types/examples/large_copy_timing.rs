//! Times `large_copy::copy_to_fresh` against a plain `memcpy`, into fresh memory (a new anonymous
//! mapping per copy) or warm memory (one reused block), with wall and CPU time (docs/payloads.md,
//! "Fresh memory"; docs/benchmarks.md has the figures):
//!
//! ```sh
//! tools/in-venv.sh .venv cargo run --release -p interpool-worker-types --example large_copy_timing -- 64 fresh
//! taskset -c 0 ...   # one core: never split, so the populated copy alone
//! ```
//!
//! Arguments: MiB, then `fresh` or `warm`. Prints the medians of 15 copies of each way.

#![allow(unsafe_code)]

use std::time::Instant;

use interpool_worker_types::large_copy::copy_to_fresh;

/// This process's CPU time so far, in ms.
fn cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid out-pointer for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).expect("MiB");
    let fresh = args.next().as_deref() != Some("warm");
    let len = mib << 20;
    let src = vec![7u8; len];
    let mut warm = vec![0u8; len];
    for plain in [true, false] {
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            let dst = if fresh {
                // SAFETY: a new private anonymous mapping, ours alone until unmapped below.
                let map = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                assert_ne!(map, libc::MAP_FAILED);
                map.cast::<u8>()
            } else {
                warm.as_mut_ptr()
            };
            let (start, start_cpu) = (Instant::now(), cpu_ms());
            // SAFETY: `dst` is `len` writable bytes of our own, apart from `src`.
            unsafe {
                if plain {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), dst, len);
                } else {
                    copy_to_fresh(dst, &src);
                }
            }
            wall.push(start.elapsed().as_secs_f64() * 1e3);
            cpu.push(cpu_ms() - start_cpu);
            // SAFETY: the copy is done; `dst` holds `len` initialized bytes.
            assert_eq!(unsafe { *dst.add(len - 1) }, 7);
            if fresh {
                // SAFETY: the mapping made above, used no more.
                unsafe { libc::munmap(dst.cast(), len) };
            }
        }
        let way = if plain { "memcpy" } else { "copy_to_fresh" };
        let memory = if fresh { "fresh" } else { "warm" };
        println!(
            "{mib} MiB {memory} {way:>13}: wall {:.2} ms, cpu {:.2} ms",
            median(wall),
            median(cpu)
        );
    }
}
