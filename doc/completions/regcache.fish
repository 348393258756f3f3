# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_regcache_global_optspecs
    string join \n h/help V/version
end

function __fish_regcache_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_regcache_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_regcache_using_subcommand
    set -l cmd (__fish_regcache_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c regcache -n "__fish_regcache_needs_command" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_needs_command" -s V -l version -d 'Print version'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "serve" -d 'Run the mirror (defaults: listen 127.0.0.1:5000, upstream Docker Hub)'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "status" -d 'Show what the mirror serving the cache directory is doing (uptime, hit ratio, bytes saved, fills in progress, each registry\'s state), asked over its admin socket; with no mirror running, the cache\'s size against its budget, object counts, free disk, oldest and newest use'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "verify" -d 'Re-hash every cached object and remove those that do not match their digest (exit status 1 when any was removed)'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "prefetch" -d 'Fetch whole images into the cache ahead of time (mirror running or not)'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "certs" -d 'A local CA and its certificates, for serving HTTPS without a PKI at hand: `certs init` (a CA and a server certificate, and what each client needs), `certs client` (TLS client certificates), `certs show` (what certificate files hold, expiry warnings)'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "gen-cert" -d 'Kept for compatibility: the same as `regcache certs init --out DIR` (a local CA and a server certificate signed by it; never overwrites)'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "check-config" -d 'Check a configuration (the file and any `serve` flags) as `serve` would, without serving: every problem is printed with its key (and line) and the fix; exit status 2 on any'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "gc" -d 'Evict least recently used content now, down to the budget\'s low watermark'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "ls" -d 'List the cached repositories and tags: digest, age, what each takes on disk'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "rm" -d 'Remove a tag (default `latest`) and the content only it uses, or with @DIGEST that manifest and its tags, keeping what other cached tags use. Safe beside a serving mirror (a removed file is a miss, fetched again)'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "setup" -d 'Wire a client to this mirror: dockerd\'s daemon.json, containerd\'s hosts.toml files and CRI config_path (what its version needs), a podman/CRI-O registries.conf.d drop-in, buildkitd.toml. Keeps every other setting, backs the old file up beside it, prints what to restart (restarts nothing)'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "doctor" -d 'Check that each client installed here really uses this mirror: its config names it in a form that version honours, the mirror answers there with the client\'s scheme, TLS trust, and end to end: the client resolves a small image and the running mirror saw that request from that client. One line per client (✔/✘, reason, fix); exit status 1 on any ✘'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "completions" -d 'Print shell completions for SHELL to stdout'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "man" -d 'Print the man page (roff) to stdout'
complete -c regcache -n "__fish_regcache_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l config -d 'TOML config file [default: $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l listen -d 'Address to listen on, ip:port or hostname:port [default: 127.0.0.1:5000]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l cache-dir -d 'Cache directory [default: /var/cache/regcache as root, else $XDG_CACHE_HOME/regcache]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l upstream -d 'URL of the default registry\'s upstream [default: https://registry-1.docker.io]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l redirect-host -d 'A private host (`host` or `host:port`) the default registry\'s redirects and token realm may lead to, besides public addresses and the upstream\'s own host and port; repeatable (like `redirect_hosts` in the file)' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l tag-ttl -d 'How long a tag\'s answer is trusted before revalidation, e.g. 0s, 5m [default: 0s]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l max-size -d 'Most bytes the cache may take on disk, e.g. 20GiB [default: unbounded]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l min-free -d 'Free space to leave on the cache filesystem, e.g. 5GiB or 10% [default: none]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l revalidate-timeout -d 'How long an upstream may take to answer before the cached answer (or a retryable error) is served, e.g. 5s [default: 5s]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l idle-timeout -d 'Drop (and resume, at most 5 times) an upstream download that receives no bytes for this long, e.g. 60s [default: 60s]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l header-read-timeout -d 'A client must send its request head (or HTTP/2 preface) within this, e.g. 30s [default: 30s]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l max-manifest-size -d 'Largest manifest accepted from upstream, e.g. 4MiB [default: 4MiB]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l client-idle-timeout -d 'Close a client connection idle (no request in progress) this long, e.g. 2m [default: 2m]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l max-connections -d 'Client connections served at once; more get a 503 [default: half the open-file limit]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l min-fill-rate -d 'Resume a download slower than this over an idle_timeout window, e.g. 1KiB/s; 0B/s turns the floor off [default: 1KiB/s]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l outage-backoff -d 'After an upstream timeout, skip that upstream this long (cached answers are served, uncached ones fail fast), e.g. 10s [default: 10s]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l outage-probe-interval -d 'While an upstream is skipped, let one request probe it this often, e.g. 500ms [default: 500ms]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l max-upstream-bandwidth -d 'Cap on the upstream bandwidth of all fills together, e.g. 2MiB/s [default: none]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l log-format -d 'Log lines as text or as JSON objects [default: text]' -r -f -a "text\t'Human-readable lines: `<time> <level> <target>: <message> key=value ...`'
json\t'One JSON object per line: `timestamp`, `level`, `target`, `fields` (each field, e.g. the access line\'s `method`, `path`, `status`, `cache`, `bytes`, `ms`, `registry`, `counted`, `client`, `request_id`; and `message` for lines that have one — the access line has none)'"
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l node-name -d 'This node\'s name in a tier: sent as X-Regcache-Node and as the node label of /metrics [default: none, neither is sent]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l tls-cert -d 'PEM certificate chain: serve HTTPS (with --tls-key)' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l tls-key -d 'PEM private key for --tls-cert' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l htpasswd -d 'htpasswd file (bcrypt entries, `htpasswd -B`): clients must send matching Basic credentials' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l client-ca -d 'PEM CA certificates: clients must present a TLS certificate signed by one (with --tls-cert)' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l shutdown-grace -d 'After SIGTERM/SIGINT, how long responses in progress may take to finish, e.g. 5m [default: 5m]' -r
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l offline -d 'Serve only from the cache; never contact an upstream'
complete -c regcache -n "__fish_regcache_using_subcommand serve" -l allow-anonymous -d 'Serve clients that authenticate in no way on a non-loopback address although a registry has credentials (otherwise serve refuses to start)'
complete -c regcache -n "__fish_regcache_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c regcache -n "__fish_regcache_using_subcommand status" -l config -d 'TOML config file; only cache_dir, max_size and min_free are read from it [default: $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand status" -l cache-dir -d 'Cache directory [default: /var/cache/regcache as root, else $XDG_CACHE_HOME/regcache]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand status" -l max-size -d 'Most bytes the cache may take on disk, e.g. 20GiB' -r
complete -c regcache -n "__fish_regcache_using_subcommand status" -l min-free -d 'Free space to leave on the cache filesystem, e.g. 5GiB or 10%' -r
complete -c regcache -n "__fish_regcache_using_subcommand status" -l json -d 'Print JSON (the live status, or `{\\"running\\": false, \\"why\\": ..., \\"disk\\": {...}}`)'
complete -c regcache -n "__fish_regcache_using_subcommand status" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_using_subcommand verify" -l config -d 'TOML config file; only cache_dir, max_size and min_free are read from it [default: $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand verify" -l cache-dir -d 'Cache directory [default: /var/cache/regcache as root, else $XDG_CACHE_HOME/regcache]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand verify" -l max-size -d 'Most bytes the cache may take on disk, e.g. 20GiB' -r
complete -c regcache -n "__fish_regcache_using_subcommand verify" -l min-free -d 'Free space to leave on the cache filesystem, e.g. 5GiB or 10%' -r
complete -c regcache -n "__fish_regcache_using_subcommand verify" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_using_subcommand prefetch" -l platform -d 'Platform(s) to fetch from multi-platform images, `os/arch[/variant]` (repeatable) [default: linux/<this machine\'s arch>]' -r
complete -c regcache -n "__fish_regcache_using_subcommand prefetch" -l config -d 'TOML config file (the mirror\'s; registries, credentials and cache_dir are used) [default: $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand prefetch" -l cache-dir -d 'Cache directory [default: as `regcache serve`]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand prefetch" -l upstream -d 'URL of the default registry\'s upstream' -r
complete -c regcache -n "__fish_regcache_using_subcommand prefetch" -l redirect-host -d 'A private host the default registry\'s redirects may lead to (as `regcache serve`)' -r
complete -c regcache -n "__fish_regcache_using_subcommand prefetch" -l all-platforms -d 'Fetch every platform of multi-platform images'
complete -c regcache -n "__fish_regcache_using_subcommand prefetch" -l with-referrers -d 'Also fetch the referrers (OCI 1.1: signatures, SBOMs, attestations) of every manifest fetched, their manifests and blobs, and theirs in turn, so the images can be verified offline'
complete -c regcache -n "__fish_regcache_using_subcommand prefetch" -l no-wait -d 'At a registry\'s rate-limit reserve (`rate_limit_reserve`), stop with an error saying until when, instead of waiting for the budget to refill (for cron and CI jobs)'
complete -c regcache -n "__fish_regcache_using_subcommand prefetch" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and not __fish_seen_subcommand_from init client show help" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and not __fish_seen_subcommand_from init client show help" -f -a "init" -d 'Make a local CA and a server certificate signed by it (ca.crt, ca.key, regcache.crt, regcache.key), and print what the mirror and each client (Docker, containerd, podman) need. Never overwrites without --force; --force keeps an existing CA'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and not __fish_seen_subcommand_from init client show help" -f -a "client" -d 'Issue a TLS client certificate signed by the local CA (for a listener whose client_ca is that ca.crt): NAME.cert and NAME.key, and print where each client puts them'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and not __fish_seen_subcommand_from init client show help" -f -a "show" -d 'Print what PEM certificate files hold (subject, issuer, SANs, validity, days left, CA, key usages) and whether tls_key matches tls_cert: the files given, else those the config points at. Warns (stderr) when one has expired, is not yet valid, or expires within 30 days'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and not __fish_seen_subcommand_from init client show help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from init" -l hostname -d 'Name (or IP address) clients use to reach the mirror; repeatable; the first is the certificate\'s CN and the host in the printed instructions' -r
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from init" -l ip -d 'Another IP address clients may use; repeatable' -r
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from init" -l out -d 'Directory to write into [default: /etc/regcache/certs as root, else ./certs]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from init" -l port -d 'The mirror\'s port, for the printed instructions' -r
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from init" -l force -d 'Replace the server certificate and key; an existing CA (ca.crt + ca.key) is kept and signs the new one, so clients need nothing new'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from init" -l new-ca -d 'With --force: replace the CA too (every client then needs the new ca.crt)'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from init" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from client" -l name -d 'The client\'s name: its certificate\'s CN and the files\' names' -r
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from client" -l ca-dir -d 'Where the CA is (certs init\'s directory) [default: /etc/regcache/certs as root, else ./certs]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from client" -l out -d 'Directory to write the pair into [default: the CA\'s directory]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from client" -l port -d 'The mirror\'s port, for the printed instructions' -r
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from client" -l force -d 'Replace an existing pair of that name'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from client" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from show" -l config -d 'TOML config file [default: $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from help" -f -a "init" -d 'Make a local CA and a server certificate signed by it (ca.crt, ca.key, regcache.crt, regcache.key), and print what the mirror and each client (Docker, containerd, podman) need. Never overwrites without --force; --force keeps an existing CA'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from help" -f -a "client" -d 'Issue a TLS client certificate signed by the local CA (for a listener whose client_ca is that ca.crt): NAME.cert and NAME.key, and print where each client puts them'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from help" -f -a "show" -d 'Print what PEM certificate files hold (subject, issuer, SANs, validity, days left, CA, key usages) and whether tls_key matches tls_cert: the files given, else those the config points at. Warns (stderr) when one has expired, is not yet valid, or expires within 30 days'
complete -c regcache -n "__fish_regcache_using_subcommand certs; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c regcache -n "__fish_regcache_using_subcommand gen-cert" -l hostname -d 'Name (or IP address) clients use to reach the mirror; repeatable' -r
complete -c regcache -n "__fish_regcache_using_subcommand gen-cert" -l out-dir -d 'Directory to write ca.crt, ca.key, regcache.crt and regcache.key into' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand gen-cert" -l force -d 'Replace the server certificate and key, keeping an existing CA'
complete -c regcache -n "__fish_regcache_using_subcommand gen-cert" -l new-ca -d 'With --force: replace the CA too (every client then needs the new ca.crt)'
complete -c regcache -n "__fish_regcache_using_subcommand gen-cert" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l config -d 'TOML config file [default: $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l listen -d 'Address to listen on, ip:port or hostname:port [default: 127.0.0.1:5000]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l cache-dir -d 'Cache directory [default: /var/cache/regcache as root, else $XDG_CACHE_HOME/regcache]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l upstream -d 'URL of the default registry\'s upstream [default: https://registry-1.docker.io]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l redirect-host -d 'A private host (`host` or `host:port`) the default registry\'s redirects and token realm may lead to, besides public addresses and the upstream\'s own host and port; repeatable (like `redirect_hosts` in the file)' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l tag-ttl -d 'How long a tag\'s answer is trusted before revalidation, e.g. 0s, 5m [default: 0s]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l max-size -d 'Most bytes the cache may take on disk, e.g. 20GiB [default: unbounded]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l min-free -d 'Free space to leave on the cache filesystem, e.g. 5GiB or 10% [default: none]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l revalidate-timeout -d 'How long an upstream may take to answer before the cached answer (or a retryable error) is served, e.g. 5s [default: 5s]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l idle-timeout -d 'Drop (and resume, at most 5 times) an upstream download that receives no bytes for this long, e.g. 60s [default: 60s]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l header-read-timeout -d 'A client must send its request head (or HTTP/2 preface) within this, e.g. 30s [default: 30s]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l max-manifest-size -d 'Largest manifest accepted from upstream, e.g. 4MiB [default: 4MiB]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l client-idle-timeout -d 'Close a client connection idle (no request in progress) this long, e.g. 2m [default: 2m]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l max-connections -d 'Client connections served at once; more get a 503 [default: half the open-file limit]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l min-fill-rate -d 'Resume a download slower than this over an idle_timeout window, e.g. 1KiB/s; 0B/s turns the floor off [default: 1KiB/s]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l outage-backoff -d 'After an upstream timeout, skip that upstream this long (cached answers are served, uncached ones fail fast), e.g. 10s [default: 10s]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l outage-probe-interval -d 'While an upstream is skipped, let one request probe it this often, e.g. 500ms [default: 500ms]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l max-upstream-bandwidth -d 'Cap on the upstream bandwidth of all fills together, e.g. 2MiB/s [default: none]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l log-format -d 'Log lines as text or as JSON objects [default: text]' -r -f -a "text\t'Human-readable lines: `<time> <level> <target>: <message> key=value ...`'
json\t'One JSON object per line: `timestamp`, `level`, `target`, `fields` (each field, e.g. the access line\'s `method`, `path`, `status`, `cache`, `bytes`, `ms`, `registry`, `counted`, `client`, `request_id`; and `message` for lines that have one — the access line has none)'"
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l node-name -d 'This node\'s name in a tier: sent as X-Regcache-Node and as the node label of /metrics [default: none, neither is sent]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l tls-cert -d 'PEM certificate chain: serve HTTPS (with --tls-key)' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l tls-key -d 'PEM private key for --tls-cert' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l htpasswd -d 'htpasswd file (bcrypt entries, `htpasswd -B`): clients must send matching Basic credentials' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l client-ca -d 'PEM CA certificates: clients must present a TLS certificate signed by one (with --tls-cert)' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l shutdown-grace -d 'After SIGTERM/SIGINT, how long responses in progress may take to finish, e.g. 5m [default: 5m]' -r
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l offline -d 'Serve only from the cache; never contact an upstream'
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -l allow-anonymous -d 'Serve clients that authenticate in no way on a non-loopback address although a registry has credentials (otherwise serve refuses to start)'
complete -c regcache -n "__fish_regcache_using_subcommand check-config" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c regcache -n "__fish_regcache_using_subcommand gc" -l config -d 'TOML config file; only cache_dir, max_size and min_free are read from it [default: $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand gc" -l cache-dir -d 'Cache directory [default: /var/cache/regcache as root, else $XDG_CACHE_HOME/regcache]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand gc" -l max-size -d 'Most bytes the cache may take on disk, e.g. 20GiB' -r
complete -c regcache -n "__fish_regcache_using_subcommand gc" -l min-free -d 'Free space to leave on the cache filesystem, e.g. 5GiB or 10%' -r
complete -c regcache -n "__fish_regcache_using_subcommand gc" -l dry-run -d 'Show what would be removed; remove nothing'
complete -c regcache -n "__fish_regcache_using_subcommand gc" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_using_subcommand ls" -l config -d 'TOML config file; only cache_dir, max_size and min_free are read from it [default: $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand ls" -l cache-dir -d 'Cache directory [default: /var/cache/regcache as root, else $XDG_CACHE_HOME/regcache]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand ls" -l max-size -d 'Most bytes the cache may take on disk, e.g. 20GiB' -r
complete -c regcache -n "__fish_regcache_using_subcommand ls" -l min-free -d 'Free space to leave on the cache filesystem, e.g. 5GiB or 10%' -r
complete -c regcache -n "__fish_regcache_using_subcommand ls" -l json -d 'Print JSON'
complete -c regcache -n "__fish_regcache_using_subcommand ls" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_using_subcommand rm" -l config -d 'TOML config file; only cache_dir, max_size and min_free are read from it [default: $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand rm" -l cache-dir -d 'Cache directory [default: /var/cache/regcache as root, else $XDG_CACHE_HOME/regcache]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand rm" -l max-size -d 'Most bytes the cache may take on disk, e.g. 20GiB' -r
complete -c regcache -n "__fish_regcache_using_subcommand rm" -l min-free -d 'Free space to leave on the cache filesystem, e.g. 5GiB or 10%' -r
complete -c regcache -n "__fish_regcache_using_subcommand rm" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_using_subcommand setup" -l mirror -d 'The mirror\'s URL as the clients reach it [default: the config\'s first listener, 0.0.0.0 as 127.0.0.1]' -r
complete -c regcache -n "__fish_regcache_using_subcommand setup" -l config -d 'The mirror\'s config file (listeners, registries) [default: $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand setup" -l ca -d 'The CA certificate (PEM) the clients are to trust for an https mirror (`regcache certs init`\'s ca.crt): copied to /etc/docker/certs.d/HOST:PORT/ca.crt and /etc/containers/certs.d/HOST:PORT/ca.crt, named by containerd\'s hosts.toml `ca` and buildkitd.toml `ca`' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand setup" -l root -d 'Prefix of every default client path below, and of the paths the clients\' configs name (containerd\'s config_path): for scratch directories in tests; configs then name the prefixed paths' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand setup" -l docker-config -d 'dockerd\'s config file [default: <root>/etc/docker/daemon.json]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand setup" -l containerd-config -d 'containerd\'s config file [default: <root>/etc/containerd/config.toml]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand setup" -l containerd-hosts-dir -d 'containerd\'s hosts directory [default: <root>/etc/containerd/certs.d]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand setup" -l registries-conf-d -d 'containers/image\'s drop-in directory [default: <root>/etc/containers/registries.conf.d]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand setup" -l buildkitd-config -d 'buildkitd\'s config file [default: <root>/etc/buildkit/buildkitd.toml]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand setup" -l dry-run -d 'Print the changes as a diff; write nothing'
complete -c regcache -n "__fish_regcache_using_subcommand setup" -l default-host -d 'containerd: also write `_default/hosts.toml` (every registry without its own directory goes to the mirror; it names no server, so each falls back to itself)'
complete -c regcache -n "__fish_regcache_using_subcommand setup" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l config -d 'The mirror\'s config file (its listeners and cache directory) [default: $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l cache-dir -d 'The mirror\'s cache directory (where its admin socket is), instead of the config\'s' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l listen -d 'The mirror\'s listen address, instead of its listeners (the running mirror\'s, else the config\'s)' -r
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l root -d 'Prefix of every default client path below, and of the paths the clients\' configs name (containerd\'s config_path): for scratch directories in tests; configs then name the prefixed paths' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l docker-config -d 'dockerd\'s config file [default: <root>/etc/docker/daemon.json]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l containerd-config -d 'containerd\'s config file [default: <root>/etc/containerd/config.toml]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l containerd-hosts-dir -d 'containerd\'s hosts directory [default: <root>/etc/containerd/certs.d]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l registries-conf-d -d 'containers/image\'s drop-in directory [default: <root>/etc/containers/registries.conf.d]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l buildkitd-config -d 'buildkitd\'s config file [default: <root>/etc/buildkit/buildkitd.toml]' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l image -d 'The small image the clients resolve for the end-to-end proof (a docker.io name)' -r
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l docker-host -d 'dockerd\'s socket [default: $DOCKER_HOST, else unix:///var/run/docker.sock]' -r
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l containerd-address -d 'containerd\'s socket' -r -F
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l no-pull -d 'Only check the configs and the mirror\'s address; no end-to-end pull'
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -l json -d 'Print JSON: one object per client (`client`, `version`, `ok`, `skipped`, `reason`, `fix`)'
complete -c regcache -n "__fish_regcache_using_subcommand doctor" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c regcache -n "__fish_regcache_using_subcommand completions" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_using_subcommand man" -s h -l help -d 'Print help'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "serve" -d 'Run the mirror (defaults: listen 127.0.0.1:5000, upstream Docker Hub)'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "status" -d 'Show what the mirror serving the cache directory is doing (uptime, hit ratio, bytes saved, fills in progress, each registry\'s state), asked over its admin socket; with no mirror running, the cache\'s size against its budget, object counts, free disk, oldest and newest use'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "verify" -d 'Re-hash every cached object and remove those that do not match their digest (exit status 1 when any was removed)'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "prefetch" -d 'Fetch whole images into the cache ahead of time (mirror running or not)'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "certs" -d 'A local CA and its certificates, for serving HTTPS without a PKI at hand: `certs init` (a CA and a server certificate, and what each client needs), `certs client` (TLS client certificates), `certs show` (what certificate files hold, expiry warnings)'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "gen-cert" -d 'Kept for compatibility: the same as `regcache certs init --out DIR` (a local CA and a server certificate signed by it; never overwrites)'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "check-config" -d 'Check a configuration (the file and any `serve` flags) as `serve` would, without serving: every problem is printed with its key (and line) and the fix; exit status 2 on any'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "gc" -d 'Evict least recently used content now, down to the budget\'s low watermark'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "ls" -d 'List the cached repositories and tags: digest, age, what each takes on disk'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "rm" -d 'Remove a tag (default `latest`) and the content only it uses, or with @DIGEST that manifest and its tags, keeping what other cached tags use. Safe beside a serving mirror (a removed file is a miss, fetched again)'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "setup" -d 'Wire a client to this mirror: dockerd\'s daemon.json, containerd\'s hosts.toml files and CRI config_path (what its version needs), a podman/CRI-O registries.conf.d drop-in, buildkitd.toml. Keeps every other setting, backs the old file up beside it, prints what to restart (restarts nothing)'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "doctor" -d 'Check that each client installed here really uses this mirror: its config names it in a form that version honours, the mirror answers there with the client\'s scheme, TLS trust, and end to end: the client resolves a small image and the running mirror saw that request from that client. One line per client (✔/✘, reason, fix); exit status 1 on any ✘'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "completions" -d 'Print shell completions for SHELL to stdout'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "man" -d 'Print the man page (roff) to stdout'
complete -c regcache -n "__fish_regcache_using_subcommand help; and not __fish_seen_subcommand_from serve status verify prefetch certs gen-cert check-config gc ls rm setup doctor completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c regcache -n "__fish_regcache_using_subcommand help; and __fish_seen_subcommand_from certs" -f -a "init" -d 'Make a local CA and a server certificate signed by it (ca.crt, ca.key, regcache.crt, regcache.key), and print what the mirror and each client (Docker, containerd, podman) need. Never overwrites without --force; --force keeps an existing CA'
complete -c regcache -n "__fish_regcache_using_subcommand help; and __fish_seen_subcommand_from certs" -f -a "client" -d 'Issue a TLS client certificate signed by the local CA (for a listener whose client_ca is that ca.crt): NAME.cert and NAME.key, and print where each client puts them'
complete -c regcache -n "__fish_regcache_using_subcommand help; and __fish_seen_subcommand_from certs" -f -a "show" -d 'Print what PEM certificate files hold (subject, issuer, SANs, validity, days left, CA, key usages) and whether tls_key matches tls_cert: the files given, else those the config points at. Warns (stderr) when one has expired, is not yet valid, or expires within 30 days'
