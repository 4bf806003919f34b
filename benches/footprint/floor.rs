//! This machine's floor for one poll: the same three IMDSv2 GETs on one kept-alive
//! blocking socket, no runtime, no HTTP library, on a thread of its own. The agent cannot
//! poll for less CPU than the kernel spends on these round trips, so the idle figures are
//! read beside it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use spot_guard::imds::{
    REBALANCE_RECOMMENDATION_PATH, SCHEDULED_EVENTS_PATH, SPOT_INSTANCE_ACTION_PATH, TOKEN_PATH,
};

use crate::Result;
use crate::procfs::this_thread_cpu;

const PATHS: [&str; 3] = [
    SPOT_INSTANCE_ACTION_PATH,
    SCHEDULED_EVENTS_PATH,
    REBALANCE_RECOMMENDATION_PATH,
];

/// CPU per poll of the thread that runs `polls` polls `interval` apart (after one warm-up
/// poll) against the IMDS at `url` ("http://127.0.0.1:PORT").
pub fn cpu_per_poll(url: &str, interval: Duration, polls: u32) -> Result<Duration> {
    let address = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let mut buffer = vec![0u8; 16 * 1024];
    let token_request = format!(
        "PUT {TOKEN_PATH} HTTP/1.1\r\nhost: {address}\r\n\
         x-aws-ec2-metadata-token-ttl-seconds: 21600\r\ncontent-length: 0\r\n\r\n"
    );
    let token = exchange(&mut stream, token_request.as_bytes(), &mut buffer)?;
    let requests: Vec<String> = PATHS
        .iter()
        .map(|path| {
            format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nx-aws-ec2-metadata-token: {token}\r\n\r\n")
        })
        .collect();
    let mut poll = |stream: &mut TcpStream| -> Result<()> {
        for request in &requests {
            exchange(stream, request.as_bytes(), &mut buffer)?;
        }
        Ok(())
    };
    poll(&mut stream)?;
    let start = this_thread_cpu()?;
    for _ in 0..polls {
        std::thread::sleep(interval);
        poll(&mut stream)?;
    }
    let used = this_thread_cpu()?.saturating_sub(start);
    Ok(used / polls.max(1))
}

/// Writes one request and reads its answer (Content-Length bodies only, as IMDS and the
/// simulator send); returns the body.
fn exchange(stream: &mut TcpStream, request: &[u8], buffer: &mut [u8]) -> Result<String> {
    stream.write_all(request)?;
    let mut read = 0;
    loop {
        let n = stream.read(&mut buffer[read..])?;
        if n == 0 {
            return Err("IMDS closed the connection".into());
        }
        read += n;
        let Some(head_end) = buffer[..read].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buffer[..head_end])?;
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .ok_or("an answer without Content-Length")?;
        let body_start = head_end + 4;
        if read >= body_start + length {
            return Ok(String::from_utf8_lossy(&buffer[body_start..body_start + length]).into());
        }
    }
}
