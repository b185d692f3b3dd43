#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| epoll_echo::fuzzing::echo_stream(data));
