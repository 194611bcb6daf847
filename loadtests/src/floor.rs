//! The floor: the least work an SFU must do for a layout, measured on the same machine.
//! One forwarder thread does `recvmmsg` → SRTP unprotect (the publisher's context) →
//! SRTP protect per subscriber (the subscriber's context) → `sendmmsg`, with webrtc-rs's own
//! SRTP implementation (AEAD AES-128-GCM, what webrtc-rs peers negotiate), the same packet
//! sizes and rates as `call`'s profiles, and the same fan-out (audio and the 720p layer to
//! every other participant of the room; the 180p/360p layers are received and dropped;
//! the screenshare stream at its average rate, not in bursts).
//! No ICE, DTLS, RTCP or header rewriting: Sluice's CPU per packet divided by this is the
//! price of everything else.

use crate::peer::Profile;
use rtc::crypto::providers::AwsLcRsCrypto;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A floor run.
#[derive(Clone, Debug)]
pub struct FloorOptions {
    /// Rooms.
    pub rooms: usize,
    /// Participants per room.
    pub participants: usize,
    /// Publishers per room.
    pub publishers: usize,
    /// Media profile.
    pub profile: Profile,
    /// Measuring window.
    pub duration: Duration,
}

const BATCH: usize = 64;
const KEY: [u8; 16] = [7; 16];
const SALT: [u8; 12] = [9; 12];

fn context() -> Context {
    Context::new(
        &KEY,
        &SALT,
        ProtectionProfile::AeadAes128Gcm,
        None,
        None,
        &AwsLcRsCrypto,
    )
    .expect("SRTP context")
}

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// A stream a publisher sends: (ssrc, room, publisher, forwarded?, packet length, interval).
struct Stream {
    ssrc: u32,
    room: usize,
    publisher: usize,
    forwarded: bool,
    len: usize,
    interval: Duration,
}

fn streams(o: &FloorOptions) -> Vec<Stream> {
    let mut out = vec![];
    for room in 0..o.rooms {
        for publisher in 0..o.publishers {
            let base = 0x6000_0000 + (room as u32) * 4096 + (publisher as u32) * 16;
            out.push(Stream {
                ssrc: base,
                room,
                publisher,
                forwarded: true,
                len: 80,
                interval: Duration::from_millis(20),
            });
            if o.profile == Profile::Screenshare {
                // The average rate of the screenshare stream (the floor sends it evenly,
                // not in bursts), forwarded to everyone.
                out.push(Stream {
                    ssrc: base + 8,
                    room,
                    publisher,
                    forwarded: true,
                    len: 1200,
                    interval: Duration::from_secs_f64(1.0 / crate::peer::screen_pps()),
                });
            }
            if o.profile == Profile::Video {
                for (l, pps) in [16u64, 52, 177].into_iter().enumerate() {
                    out.push(Stream {
                        ssrc: base + 1 + l as u32,
                        room,
                        publisher,
                        forwarded: l == 2,
                        len: 1200,
                        interval: Duration::from_micros(1_000_000 / pps),
                    });
                }
            }
        }
    }
    out
}

fn rtp(ssrc: u32, seq: u16, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; 12 + len];
    p[0] = 0x80;
    p[1] = 96;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(seq as u32 * 960).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

fn sockaddr(addr: &SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(a) = addr else {
        panic!("IPv4 loopback only")
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Runs the floor forwarder for the layout and reports its CPU per forwarded packet.
pub fn run_floor(o: &FloorOptions) -> Result<Value, String> {
    if o.rooms == 0 || o.participants < 2 || o.publishers == 0 || o.publishers > o.participants {
        return Err(
            "need rooms >= 1, participants >= 2 and 1 <= publishers <= participants".into(),
        );
    }
    let fwd = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    fwd.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let fwd_addr = fwd.local_addr().map_err(|e| e.to_string())?;
    // One receiving socket per subscriber, drained by one thread.
    let mut sinks = vec![];
    for _ in 0..o.rooms * o.participants {
        let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        sinks.push(s);
    }
    let sink_addrs: Vec<libc::sockaddr_in> = sinks
        .iter()
        .map(|s| sockaddr(&s.local_addr().unwrap()))
        .collect();
    let all = streams(o);
    let by_ssrc: HashMap<u32, usize> = all.iter().enumerate().map(|(i, s)| (s.ssrc, i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let forwarded = Arc::new(AtomicU64::new(0));
    let cpu_bits = Arc::new(AtomicU64::new(0));

    // Forwarder.
    let fwd_thread = {
        let stop = stop.clone();
        let forwarded = forwarded.clone();
        let cpu_bits = cpu_bits.clone();
        let meta: Vec<(usize, usize, bool)> = all
            .iter()
            .map(|s| (s.room, s.publisher, s.forwarded))
            .collect();
        let participants = o.participants;
        std::thread::spawn(move || {
            let fd = fwd.as_raw_fd();
            let mut pub_ctx: HashMap<u32, Context> = HashMap::new();
            let mut sub_ctx: Vec<Context> = (0..sink_addrs.len()).map(|_| context()).collect();
            let mut bufs = vec![[0u8; 1500]; BATCH];
            let mut out: Vec<(bytes::BytesMut, usize)> = Vec::with_capacity(BATCH * participants);
            while !stop.load(Ordering::Relaxed) {
                let mut iov: Vec<libc::iovec> = bufs
                    .iter_mut()
                    .map(|b| libc::iovec {
                        iov_base: b.as_mut_ptr() as *mut libc::c_void,
                        iov_len: b.len(),
                    })
                    .collect();
                let mut msgs: Vec<libc::mmsghdr> = iov
                    .iter_mut()
                    .map(|v| {
                        let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                        m.msg_hdr.msg_iov = v;
                        m.msg_hdr.msg_iovlen = 1;
                        m
                    })
                    .collect();
                let n = unsafe {
                    libc::recvmmsg(
                        fd,
                        msgs.as_mut_ptr(),
                        BATCH as u32,
                        libc::MSG_WAITFORONE,
                        std::ptr::null_mut(),
                    )
                };
                if n > 0 {
                    out.clear();
                    for (i, m) in msgs.iter().take(n as usize).enumerate() {
                        let pkt = &bufs[i][..m.msg_len as usize];
                        if pkt.len() < 12 {
                            continue;
                        }
                        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
                        let Some(&si) = by_ssrc.get(&ssrc) else {
                            continue;
                        };
                        let ctx = pub_ctx.entry(ssrc).or_insert_with(context);
                        let Ok(plain) = ctx.decrypt_rtp(pkt) else {
                            continue;
                        };
                        let (room, publisher, fwd_it) = meta[si];
                        if !fwd_it {
                            continue;
                        }
                        for p in 0..participants {
                            if p == publisher {
                                continue;
                            }
                            let sub = room * participants + p;
                            if let Ok(enc) = sub_ctx[sub].encrypt_rtp(&plain) {
                                out.push((enc, sub));
                            }
                        }
                    }
                    for chunk in out.chunks(BATCH) {
                        let mut iov: Vec<libc::iovec> = chunk
                            .iter()
                            .map(|(b, _)| libc::iovec {
                                iov_base: b.as_ptr() as *mut libc::c_void,
                                iov_len: b.len(),
                            })
                            .collect();
                        let mut msgs: Vec<libc::mmsghdr> = chunk
                            .iter()
                            .zip(iov.iter_mut())
                            .map(|((_, sub), v)| {
                                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                                m.msg_hdr.msg_iov = v;
                                m.msg_hdr.msg_iovlen = 1;
                                m.msg_hdr.msg_name =
                                    &sink_addrs[*sub] as *const _ as *mut libc::c_void;
                                m.msg_hdr.msg_namelen =
                                    std::mem::size_of::<libc::sockaddr_in>() as u32;
                                m
                            })
                            .collect();
                        let sent =
                            unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as u32, 0) };
                        if sent > 0 {
                            forwarded.fetch_add(sent as u64, Ordering::Relaxed);
                        }
                    }
                }
                cpu_bits.store(thread_cpu_seconds().to_bits(), Ordering::Relaxed);
            }
        })
    };

    // Receivers: drain every subscriber socket.
    let rx_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                let mut any = false;
                for s in &sinks {
                    while s.recv(&mut buf).is_ok() {
                        any = true;
                    }
                }
                if !any {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        })
    };

    // Publishers: one thread paces every stream.
    let tx_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let mut ctxs: Vec<Context> = all.iter().map(|_| context()).collect();
            let start = Instant::now();
            let mut next: Vec<Duration> = all.iter().map(|_| Duration::ZERO).collect();
            let mut seq: Vec<u16> = vec![0; all.len()];
            while !stop.load(Ordering::Relaxed) {
                let now = start.elapsed();
                for (i, s) in all.iter().enumerate() {
                    while next[i] <= now {
                        if let Ok(enc) = ctxs[i].encrypt_rtp(&rtp(s.ssrc, seq[i], s.len)) {
                            let _ = sock.send_to(&enc, fwd_addr);
                        }
                        seq[i] = seq[i].wrapping_add(1);
                        next[i] += s.interval;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    std::thread::sleep(Duration::from_secs(2));
    let (f0, c0, t0) = (
        forwarded.load(Ordering::Relaxed),
        f64::from_bits(cpu_bits.load(Ordering::Relaxed)),
        Instant::now(),
    );
    std::thread::sleep(o.duration);
    let (f1, c1, window) = (
        forwarded.load(Ordering::Relaxed),
        f64::from_bits(cpu_bits.load(Ordering::Relaxed)),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in [fwd_thread, rx_thread, tx_thread] {
        let _ = t.join();
    }
    let packets = f1 - f0;
    let cpu = c1 - c0;
    Ok(json!({
        "profile": format!("{:?}", o.profile).to_lowercase(),
        "rooms": o.rooms, "participants_per_room": o.participants, "publishers_per_room": o.publishers,
        "window_seconds": window,
        "forwarded_packets": packets,
        "forwarded_packets_per_sec": packets as f64 / window,
        "cpu_seconds": cpu,
        "cpu_seconds_per_million_packets": if packets > 0 { cpu / packets as f64 * 1e6 } else { 0.0 },
        "packets_per_sec_per_core": if cpu > 0.0 { packets as f64 / cpu } else { 0.0 },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_forwards_the_layout_and_measures_its_cpu() {
        let r = run_floor(&FloorOptions {
            rooms: 1,
            participants: 3,
            publishers: 2,
            profile: Profile::Video,
            duration: Duration::from_secs(1),
        })
        .unwrap();
        // 2 publishers × (audio 50 + 720p 177) packets/s × 2 subscribers each ≈ 908/s.
        let pps = r["forwarded_packets_per_sec"].as_f64().unwrap();
        assert!(pps > 500.0 && pps < 1300.0, "{r}");
        assert!(r["cpu_seconds"].as_f64().unwrap() > 0.0, "{r}");
    }
}
