//! Fuzzes the Open Protocol framing and message parsing with arbitrary bytes fed in
//! arbitrary chunks, as a TCP stream would deliver them. Neither may panic, loop or
//! allocate without bound; every telegram that decodes must encode again, and every
//! message that parses must survive its own round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/south/wrench/codec.rs"]
mod codec;
#[allow(dead_code)]
#[path = "../../src/south/wrench/messages.rs"]
mod messages;

use messages::Message;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a chunk size, so that partial reads are exercised too.
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut buffer = Vec::new();
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            match codec::decode(&mut buffer) {
                Ok(Some(telegram)) => {
                    let mut bytes = Vec::new();
                    codec::encode(&telegram, &mut bytes).expect("a decoded telegram encodes");
                    if let Ok(message) = Message::from_telegram(&telegram) {
                        let again = message.to_telegram();
                        let mut wire = Vec::new();
                        if codec::encode(&again, &mut wire).is_ok() {
                            let reparsed = codec::decode(&mut wire).expect("own output frames").expect("whole");
                            // Our own encoding of a parsed message parses back.
                            Message::from_telegram(&reparsed).expect("own output parses");
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return, // the link would be dropped here
            }
        }
    }
});
