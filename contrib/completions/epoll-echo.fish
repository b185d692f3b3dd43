complete -c epoll-echo -l port -d 'TCP port to listen on (0 picks a free port)' -r
complete -c epoll-echo -l maxListeners -l max-listeners -d 'Worker threads, each with its own listener and epoll [default: number of CPUs]' -r
complete -c epoll-echo -l bind -d 'Address to listen on, fe80::1%eth0 for a link-local one [default: :: serving IPv4 and IPv6, or 0.0.0.0 without IPv6]' -r
complete -c epoll-echo -l max-pending -d 'Cap on one connection\'s unsent echo, in bytes; at the cap the connection is not read' -r
complete -c epoll-echo -l drain-timeout -d 'How long a graceful stop may wait for peers to take their echo (500ms, 5s, 1m, or seconds)' -r
complete -c epoll-echo -l max-conns -d 'Most connections open at once over all workers; at the limit new ones are accepted and closed at once (counted as rejected) [default: no limit]' -r
complete -c epoll-echo -l idle-timeout -d 'Close connections with no traffic in either direction for this long (e.g. 60s, 5m; 0 = never)' -r
complete -c epoll-echo -l backlog -d 'Completed connections the kernel may queue per listener; larger values are capped by net.core.somaxconn [default: the kernel\'s limit, net.core.somaxconn]' -r
complete -c epoll-echo -l handover -d 'Restart without closing a listener: take the listeners of the instance serving at PATH (a Unix socket) if there is one, else bind; then serve them at PATH for the next instance. Stop the old instance once the new one is listening [default: off]' -r -F
complete -c epoll-echo -l metrics-addr -d 'Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9100; port 0 picks one) [default: off]' -r
complete -c epoll-echo -l reuse-port -d 'Share the port with listeners already there (another instance during an overlapping restart) instead of refusing to start; new connections are spread over all of them'
complete -c epoll-echo -s h -l help -d 'Print help'
complete -c epoll-echo -s V -l version -d 'Print version'
