/* Suite sni: TLS passthrough routed by the ClientHello's server name (issue 12 part 2), against
 * the real binary. Real TLS backends (openssl s_server, each with its own self-signed
 * certificate) and real clients (openssl s_client -servername, curl --resolve): each client must
 * see the certificate of the backend its name maps to. Raw clients replaying a captured
 * ClientHello (tests/sni_hellos.h) check the policies (no TLS, no SNI, timeout, size), that
 * every byte reaches the chosen echo backend unchanged, and that uproxy_sni_routed_total counts
 * only the names that matched a route. Configs use the [pool]/[listener] syntax of the issue 12
 * spec. */
#include "harness.h"
#include "../sni_hellos.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the test's private directory: certificates, keys, config ---- */

static char sni_dir[64];

/* Makes the directory (removed by sni_fini, passed or not). */
static void sni_dir_make(void)
{
	snprintf(sni_dir, sizeof(sni_dir), "/tmp/uproxy-sni-XXXXXX");
	cr_assert_not_null(mkdtemp(sni_dir), "mkdtemp: %s", strerror(errno));
}

/* Joins name to the directory. */
static void sni_path(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", sni_dir, name);
}

/* The full path of prog found in PATH; fails the test (never skips) when it is missing:
 * scripts/setup.sh installs openssl and curl. */
static const char *find_prog(const char *prog, char *out, size_t len)
{
	const char *path = getenv("PATH");
	char dirs[4096];

	snprintf(dirs, sizeof(dirs), "%s", path ? path : "/usr/bin:/bin");
	for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
		snprintf(out, len, "%s/%s", d, prog);
		if (access(out, X_OK) == 0)
			return out;
	}
	cr_assert_fail("%s not found in PATH: run scripts/setup.sh", prog);
	return NULL;
}

/* Runs argv to completion (≤ timeout_ms); returns its exit code (-1: killed or timed out) and
 * its stdout and stderr (malloc'd) in *out and *err when asked. */
static int run_prog(char *const argv[], int timeout_ms, char **out, char **err)
{
	struct proc p;
	int code;

	cr_assert_eq(proc_spawn(&p, argv, 0, 0), 0, "cannot spawn %s", argv[0]);
	if (!proc_wait(&p, timeout_ms))
		proc_kill(&p);
	code = WIFEXITED(p.status) ? WEXITSTATUS(p.status) : -1;
	if (out)
		*out = proc_stdout(&p);
	if (err)
		*err = proc_stderr(&p);
	proc_release(&p);
	return code;
}

/* ---- TLS backends: openssl s_server -www, one self-signed certificate each ---- */

#define TLS_BACKENDS 3

struct tls_backend {
	char cn[32];
	uint16_t port;
	struct proc proc;
	bool running;
};

static struct tls_backend tlsb[TLS_BACKENDS];

/* Generates a self-signed RSA certificate for CN=cn (valid one day) into the directory. */
static void make_cert(const char *cn)
{
	char openssl[256], subj[64], key[128], crt[128], name[64];
	char *err = NULL;
	int code;

	find_prog("openssl", openssl, sizeof(openssl));
	snprintf(subj, sizeof(subj), "/CN=%s", cn);
	snprintf(name, sizeof(name), "%s.key", cn);
	sni_path(key, sizeof(key), name);
	snprintf(name, sizeof(name), "%s.crt", cn);
	sni_path(crt, sizeof(crt), name);
	{
		char *argv[] = { openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
				 subj, "-days", "1", "-keyout", key, "-out", crt, NULL };

		/* 30 s: an RSA-2048 key takes well under a second, even on a loaded machine */
		code = run_prog(argv, 30000, NULL, &err);
	}
	cr_assert_eq(code, 0, "openssl req for %s exited %d:\n%s", cn, code, err);
	free(err);
}

/* Starts `openssl s_server -www` with cn's certificate on a free port, and waits (≤ 5 s) until
 * it listens; tries another port if the first was taken meanwhile. */
static void tls_backend_start(struct tls_backend *b, const char *cn)
{
	char openssl[256], accept[32], key[128], crt[128], name[64];

	memset(b, 0, sizeof(*b));
	snprintf(b->cn, sizeof(b->cn), "%s", cn);
	make_cert(cn);
	find_prog("openssl", openssl, sizeof(openssl));
	snprintf(name, sizeof(name), "%s.key", cn);
	sni_path(key, sizeof(key), name);
	snprintf(name, sizeof(name), "%s.crt", cn);
	sni_path(crt, sizeof(crt), name);
	for (int attempt = 0; attempt < 3 && !b->running; attempt++) {
		b->port = free_port();
		snprintf(accept, sizeof(accept), "127.0.0.1:%u", b->port);
		{
			char *argv[] = { openssl, "s_server", "-accept", accept, "-cert", crt,
					 "-key",  key,	      "-www",	 "-quiet", NULL };

			cr_assert_eq(proc_spawn(&b->proc, argv, 0, 0), 0, "cannot spawn s_server");
		}
		for (int i = 0; i < 250 && !proc_wait(&b->proc, 0); i++) {
			if (tcp4_listening(b->port)) {
				b->running = true;
				break;
			}
			sleep_ms(20);
		}
		if (!b->running) {
			char *err = proc_stderr(&b->proc);

			proc_kill(&b->proc);
			cr_log_warn("s_server on %s did not listen (%s)", accept, err);
			free(err);
			proc_release(&b->proc);
		}
	}
	cr_assert(b->running, "openssl s_server for %s never listened", cn);
}

/* The three TLS backends: A (sni-route a.test), B (*.b.test), C (the default pool). */
static void tls_backends_start(void)
{
	static const char *const cns[TLS_BACKENDS] = { "backend-a", "backend-b", "backend-c" };

	for (int i = 0; i < TLS_BACKENDS; i++)
		tls_backend_start(&tlsb[i], cns[i]);
}

/* ---- the proxy, from a config file ---- */

static struct proxy px;
/* Plain echo backends for the raw-client tests: the a.test route's pool and the default pool. */
static struct backend echo_a, echo_dflt;

/* The config of sni_proxy_start: global lines, pools, then "[listener tls]" and its keys. */
struct sni_conf {
	const char *pools, *keys;
};

/* Port of --stats ("stats" in the file) for the next sni_proxy_start; 0: none. */
static uint16_t stats_port;

/* Writes the config for a listener on port (proxy_spawn_listen's hook). */
static void sni_conf_write(uint16_t port, void *arg)
{
	const struct sni_conf *c = arg;
	char path[128], stats[48] = "";

	sni_path(path, sizeof(path), "uproxy.conf");
	if (stats_port)
		snprintf(stats, sizeof(stats), "stats 127.0.0.1:%u\n", stats_port);
	file_write_atomic(path, "workers 1\n%s\n%s\n[listener tls]\nlisten 127.0.0.1:%u\n%s",
			  stats, c->pools, port, c->keys);
}

/* Writes the config (global "workers 1" and stats, then pools, then "[listener tls]" with its
 * listen line on a free port followed by keys) and starts uproxy --config on it, without a
 * readiness session; up_port is the default pool's port (for the idle check's socket count). */
static void sni_proxy_start(const char *pools, const char *keys, uint16_t up_port)
{
	struct sni_conf c = { pools, keys };
	char path[128];

	sni_path(path, sizeof(path), "uproxy.conf");
	proxy_spawn_listen(&px, NULL, up_port, (const char *const[]){ "--config", path, NULL },
			   sni_conf_write, &c);
}

/* The TLS config: sni-route a.test -> A, *.b.test -> B, default pool C. */
static void tls_proxy_start(void)
{
	char pools[512];

	snprintf(pools, sizeof(pools),
		 "[pool poolA]\nupstream 127.0.0.1:%u\n\n"
		 "[pool poolB]\nupstream 127.0.0.1:%u\n\n"
		 "[pool poolC]\nupstream 127.0.0.1:%u\n",
		 tlsb[0].port, tlsb[1].port, tlsb[2].port);
	sni_proxy_start(pools,
			"sni-route a.test poolA\n"
			"sni-route *.b.test poolB\n"
			"pool poolC\n"
			"sni-missing default\n",
			tlsb[2].port);
}

/* .init of the TLS tests: the directory, three s_servers, the proxy in front of them. */
static void tls_init(void)
{
	sni_dir_make();
	tls_backends_start();
	tls_proxy_start();
}

/* .fini of every test: stops the proxy and the s_servers we started, removes the directory. */
static void sni_fini(void)
{
	char p[256];

	if (px.proc.pid > 0) {
		proxy_stop(&px);
		memset(&px, 0, sizeof(px));
	}
	stats_port = 0;
	if (echo_a.running)
		backend_stop(&echo_a);
	if (echo_dflt.running)
		backend_stop(&echo_dflt);
	for (int i = 0; i < TLS_BACKENDS; i++) {
		if (tlsb[i].running) {
			proc_kill(&tlsb[i].proc); /* our own child, by its pid */
			proc_release(&tlsb[i].proc);
			tlsb[i].running = false;
		}
		if (tlsb[i].cn[0]) {
			snprintf(p, sizeof(p), "%s/%s.key", sni_dir, tlsb[i].cn);
			unlink(p);
			snprintf(p, sizeof(p), "%s/%s.crt", sni_dir, tlsb[i].cn);
			unlink(p);
		}
	}
	if (sni_dir[0]) {
		snprintf(p, sizeof(p), "%s/uproxy.conf", sni_dir);
		unlink(p);
		snprintf(p, sizeof(p), "%s/uproxy.conf.tmp", sni_dir);
		unlink(p);
		rmdir(sni_dir);
		sni_dir[0] = '\0';
	}
}

/* .init of the raw-client tests: only the directory (each test starts its own config). */
static void raw_init(void)
{
	sni_dir_make();
}

/* The raw-client config: sni-route a.test -> echo_a, default pool echo_dflt, with the given
 * sni-missing policy and sni-timeout. Both echo backends run. */
static void echo_proxy_start(const char *missing, unsigned int timeout_ms)
{
	char pools[256], keys[256];

	backend_bind(&echo_a, AF_INET);
	backend_bind(&echo_dflt, AF_INET);
	backend_run(&echo_a, BK_ECHO);
	backend_run(&echo_dflt, BK_ECHO);
	snprintf(pools, sizeof(pools),
		 "[pool echoA]\nupstream 127.0.0.1:%u\n\n"
		 "[pool fallback]\nupstream 127.0.0.1:%u\n",
		 echo_a.port, echo_dflt.port);
	snprintf(keys, sizeof(keys),
		 "sni-route a.test echoA\n"
		 "pool fallback\n"
		 "sni-missing %s\n"
		 "sni-timeout %u\n",
		 missing, timeout_ms);
	sni_proxy_start(pools, keys, echo_dflt.port);
}

/* ---- clients ---- */

/* openssl s_client to the proxy with -servername name (NULL: -noservername); stdin is /dev/null,
 * so it ends after the handshake. Returns its exit code, its stdout (malloc'd) in *out. */
static int s_client(const char *name, char **out)
{
	char openssl[256], connect[32];
	char *err = NULL;
	int code;

	find_prog("openssl", openssl, sizeof(openssl));
	snprintf(connect, sizeof(connect), "127.0.0.1:%u", px.port);
	{
		char *argv[] = { openssl,
				 "s_client",
				 "-connect",
				 connect,
				 name ? "-servername" : "-noservername",
				 (char *)name,
				 NULL };

		/* 10 s: a loopback handshake takes milliseconds */
		code = run_prog(argv, 10000, out, &err);
	}
	if (code != 0)
		cr_log_info("s_client %s exited %d; stderr:\n%s", name ? name : "-noservername",
			    code, err);
	free(err);
	return code;
}

/* Asserts that s_client's output shows the peer certificate subject CN = cn. */
static void assert_peer_cn(const char *out, const char *cn, const char *what)
{
	const char *line = strstr(out, "\nsubject=");
	char subject[256], want1[64], want2[64];
	size_t n;

	cr_assert_not_null(line, "%s: no peer certificate in s_client's output:\n%s", what, out);
	n = strcspn(line + 1, "\n");
	snprintf(subject, sizeof(subject), "%.*s", (int)n, line + 1);
	snprintf(want1, sizeof(want1), "CN = %s", cn);
	snprintf(want2, sizeof(want2), "CN=%s", cn);
	cr_assert(strstr(subject, want1) != NULL || strstr(subject, want2) != NULL,
		  "%s: peer certificate '%s', want CN %s", what, subject, cn);
}

/* One s_client run with servername name that must end (exit 0) with backend cn's certificate. */
static void expect_s_client(const char *name, const char *cn)
{
	char what[128], *out = NULL;
	int code = s_client(name, &out);

	snprintf(what, sizeof(what), "s_client %s", name ? name : "-noservername");
	cr_assert_eq(code, 0, "%s exited %d:\n%s", what, code, out);
	assert_peer_cn(out, cn, what);
	free(out);
}

/* curl -k -v https://name:P/ with name resolved to 127.0.0.1 (so its SNI is name): it must get
 * backend b's certificate and b's -www status page, which names b's own port. */
static void expect_curl(const char *name, const struct tls_backend *b)
{
	char curl[256], resolve[160], url[160], want_cn[64], want_port[64];
	char *out = NULL, *err = NULL;
	int code;

	find_prog("curl", curl, sizeof(curl));
	snprintf(resolve, sizeof(resolve), "%s:%u:127.0.0.1", name, px.port);
	snprintf(url, sizeof(url), "https://%s:%u/", name, px.port);
	{
		char *argv[] = { curl,	   "-sS",     "-k",    "-v",	     "--max-time", "10",
				 "--resolve", resolve, "--noproxy", "*", url,	      NULL };

		code = run_prog(argv, 15000, &out, &err);
	}
	cr_assert_eq(code, 0, "curl %s exited %d; stderr:\n%s", url, code, err);
	snprintf(want_cn, sizeof(want_cn), "subject: CN=%s", b->cn);
	cr_assert_not_null(strstr(err, want_cn), "curl %s: no '%s' in its -v output:\n%s", url,
			   want_cn, err);
	snprintf(want_port, sizeof(want_port), "s_server -accept 127.0.0.1:%u ", b->port);
	cr_assert_not_null(strstr(out, want_port), "curl %s: not %s's status page ('%s'):\n%.2000s",
			   url, b->cn, want_port, out);
	free(out);
	free(err);
}

/* Connects a raw client to the proxy (≤ 1 s); asserts. */
static int raw_connect(void)
{
	int fd = tcp_connect(AF_INET, px.port, 1000);

	cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
	return fd;
}

/* Sends buf whole (≤ 2 s) and asserts the proxy then closes the connection (EOF or reset)
 * within close_ms without sending a byte; returns the ms from the first byte sent to the close.
 * The proxy may close while we still send: a reset on the write is part of the outcome. */
static uint64_t expect_closed_after(int fd, const void *buf, size_t n, int close_ms,
				    const char *what)
{
	uint64_t t0 = now_ms(), extra = 0;
	size_t done = 0;
	enum io_end w = io_write_all(fd, buf, n, 2000, &done);
	enum io_end r;

	cr_assert(w == IO_DONE || w == IO_RESET, "%s: write: %s after %zu of %zu bytes", what,
		  io_end_name(w), done, n);
	r = io_wait_close(fd, close_ms, &extra);
	cr_assert(r == IO_EOF || r == IO_RESET, "%s: not closed within %d ms (%s)", what,
		  close_ms, io_end_name(r));
	cr_assert_eq(extra, 0, "%s: got %llu bytes before the close, want none", what,
		     (unsigned long long)extra);
	return now_ms() - t0;
}

/* Full duplex on fd: sends pre[0..prelen) then len bytes of stream seed (in writes of up to
 * 64 KiB, the first holding pre and the stream's start together), then shutdown(SHUT_WR); reads
 * everything until EOF. Hashes both directions. */
struct duplex {
	uint64_t sent, got;
	uint64_t sent_hash, got_hash;
	enum io_end end;
};

static void duplex_run(struct duplex *d, int fd, const uint8_t *pre, size_t prelen, uint64_t seed,
		       uint64_t len, int timeout_ms)
{
	static uint8_t out[64 * KIB], in[64 * KIB];
	uint64_t total = prelen + len, deadline = now_ms() + (uint64_t)timeout_ms;
	bool shut = false;

	memset(d, 0, sizeof(*d));
	d->sent_hash = d->got_hash = HASH64_INIT;
	d->end = IO_TIMEOUT;
	while (now_ms() < deadline) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN | (shut ? 0 : POLLOUT) };
		ssize_t k;

		if (poll(&pfd, 1, 50) < 0 && errno != EINTR) {
			d->end = IO_ERROR;
			return;
		}
		if (!shut && (pfd.revents & (POLLOUT | POLLERR))) {
			size_t n = total - d->sent < sizeof(out) ? total - d->sent : sizeof(out);
			size_t from_pre = d->sent < prelen ? prelen - d->sent : 0;

			if (from_pre > n)
				from_pre = n;
			if (from_pre > 0)
				memcpy(out, pre + d->sent, from_pre);
			if (n > from_pre)
				fill_random(out + from_pre, n - from_pre, seed,
					    d->sent + from_pre - prelen);
			k = send(fd, out, n, MSG_NOSIGNAL);
			if (k > 0) {
				d->sent_hash = hash64_update(d->sent_hash, out, (size_t)k);
				d->sent += (uint64_t)k;
				if (d->sent == total) {
					shutdown(fd, SHUT_WR);
					shut = true;
				}
			} else if (k < 0 && errno != EAGAIN && errno != EINTR) {
				d->end = errno == ECONNRESET || errno == EPIPE ? IO_RESET : IO_ERROR;
				return;
			}
		}
		if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
			k = recv(fd, in, sizeof(in), 0);
			if (k > 0) {
				d->got_hash = hash64_update(d->got_hash, in, (size_t)k);
				d->got += (uint64_t)k;
			} else if (k == 0) {
				d->end = IO_EOF;
				return;
			} else if (errno != EAGAIN && errno != EINTR) {
				d->end = errno == ECONNRESET ? IO_RESET : IO_ERROR;
				return;
			}
		}
	}
}

/* The hash of pre[0..prelen) followed by len bytes of stream seed, computed apart from
 * duplex_run: what it must have sent. */
static uint64_t sent_hash(const uint8_t *pre, size_t prelen, uint64_t seed, uint64_t len)
{
	static uint8_t chunk[64 * KIB];
	uint64_t h = prelen ? hash64(pre, prelen) : HASH64_INIT;

	for (uint64_t off = 0; off < len;) {
		size_t n = len - off < sizeof(chunk) ? (size_t)(len - off) : sizeof(chunk);

		fill_random(chunk, n, seed, off);
		h = hash64_update(h, chunk, n);
		off += n;
	}
	return h;
}

/* Asserts how many connections each echo backend accepted (after 50 ms for its accept thread to
 * see a connection the proxy may have just made). */
static void expect_accepted(int a, int dflt, const char *what)
{
	sleep_ms(50);
	cr_assert_eq(atomic_load(&echo_a.accepted), a, "%s: the a.test pool accepted %d, want %d",
		     what, atomic_load(&echo_a.accepted), a);
	cr_assert_eq(atomic_load(&echo_dflt.accepted), dflt,
		     "%s: the default pool accepted %d, want %d", what,
		     atomic_load(&echo_dflt.accepted), dflt);
}

/* ---- real TLS clients against real TLS backends ---- */

Test(sni, s_client_exact_name_gets_backend_a_certificate, .init = tls_init, .fini = sni_fini,
     .timeout = 60)
{
	expect_s_client("a.test", "backend-a");
	/* names are matched case-insensitively */
	expect_s_client("A.Test", "backend-a");
}

Test(sni, curl_wildcard_name_gets_backend_b, .init = tls_init, .fini = sni_fini, .timeout = 60)
{
	expect_curl("x.b.test", &tlsb[1]);
	/* one or more labels before .b.test */
	expect_curl("deep.x.b.test", &tlsb[1]);
}

Test(sni, unmatched_name_goes_to_the_default_pool, .init = tls_init, .fini = sni_fini,
     .timeout = 60)
{
	expect_s_client("other.test", "backend-c");
	/* "*.b.test" does not match b.test itself */
	expect_s_client("b.test", "backend-c");
	expect_curl("a.test.example", &tlsb[2]);
}

Test(sni, no_server_name_goes_to_the_default_pool, .init = tls_init, .fini = sni_fini,
     .timeout = 60)
{
	expect_s_client(NULL, "backend-c");
	/* and a named client right after still gets its own backend */
	expect_s_client("a.test", "backend-a");
}

/* ---- raw clients against echo backends ---- */

/* sni-missing close: a ClientHello without SNI and a plain-text client are both closed at once
 * (well before the 5 s sni-timeout) with no byte sent back and no upstream connection; a named
 * hello on the same listener is still routed. */
Test(sni, sni_missing_close_closes_without_a_byte, .init = raw_init, .fini = sni_fini,
     .timeout = 30)
{
	static const char plain[] = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
	uint8_t back[sizeof(hello_openssl_a_test)];
	uint64_t ms;
	size_t got = 0;
	int fd;

	echo_proxy_start("close", 5000);

	fd = raw_connect();
	ms = expect_closed_after(fd, hello_openssl_nosni, sizeof(hello_openssl_nosni), 1000,
				 "hello without SNI");
	cr_log_info("no SNI: closed after %llu ms", (unsigned long long)ms);
	close(fd);

	fd = raw_connect();
	ms = expect_closed_after(fd, plain, strlen(plain), 1000, "plain text");
	cr_log_info("plain text: closed after %llu ms", (unsigned long long)ms);
	close(fd);
	expect_accepted(0, 0, "after the two closed clients");

	fd = raw_connect();
	cr_assert_eq(io_write_all(fd, hello_openssl_a_test, sizeof(hello_openssl_a_test), 2000,
				  &got),
		     IO_DONE);
	cr_assert_eq(io_read_exact(fd, back, sizeof(back), 2000, &got), IO_DONE,
		     "a.test hello: echoed %zu of %zu bytes", got, sizeof(back));
	cr_assert_eq(memcmp(back, hello_openssl_a_test, sizeof(back)), 0);
	close(fd);
	expect_accepted(1, 0, "after the a.test client");
	assert_proxy_idle(&px, 2000, "after sni-missing close");
}

/* sni-missing default: a plain-text client is sent to the default pool at once (its first line
 * echoed within 1 s while sni-timeout is 5 s), then 1 MiB more comes back byte for byte. */
Test(sni, plain_text_goes_to_the_default_pool_byte_exact, .init = raw_init, .fini = sni_fini,
     .timeout = 30)
{
	static const char line[] = "GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n";
	char back[sizeof(line)];
	struct duplex d;
	uint64_t t0;
	size_t got = 0;
	int fd;

	echo_proxy_start("default", 5000);
	fd = raw_connect();
	t0 = now_ms();
	cr_assert_eq(io_write_all(fd, line, strlen(line), 2000, &got), IO_DONE);
	cr_assert_eq(io_read_exact(fd, back, strlen(line), 1000, &got), IO_DONE,
		     "plain text: %zu of %zu bytes echoed within 1 s", got, strlen(line));
	cr_assert_eq(memcmp(back, line, strlen(line)), 0);
	cr_log_info("plain text: first line echoed after %llu ms",
		    (unsigned long long)(now_ms() - t0));

	duplex_run(&d, fd, NULL, 0, 0x5a11, 1 * MIB, 20000);
	cr_assert_eq(d.end, IO_EOF, "1 MiB: %s after %llu sent, %llu back", io_end_name(d.end),
		     (unsigned long long)d.sent, (unsigned long long)d.got);
	cr_assert_eq(d.sent, 1 * MIB);
	cr_assert_eq(d.got, d.sent, "%llu bytes back of %llu", (unsigned long long)d.got,
		     (unsigned long long)d.sent);
	cr_assert_eq(d.got_hash, d.sent_hash, "the bytes came back changed");
	cr_assert_eq(d.sent_hash, sent_hash(NULL, 0, 0x5a11, 1 * MIB));
	close(fd);
	expect_accepted(0, 1, "plain text");
	assert_proxy_idle(&px, 2000, "after the plain-text client");
}

/* A ClientHello sent one byte per 5 ms (TCP_NODELAY: one segment each) is still routed by its
 * name: no upstream connection before its last byte, then the a.test pool echoes it whole. */
Test(sni, hello_trickled_byte_by_byte_is_routed, .init = raw_init, .fini = sni_fini,
     .timeout = 30)
{
	const size_t n = sizeof(hello_openssl_a_test);
	uint8_t back[sizeof(hello_openssl_a_test)];
	int one = 1, fd;
	uint64_t t0, ms;
	size_t got = 0;
	char c;

	echo_proxy_start("default", 5000);
	fd = raw_connect();
	cr_assert_eq(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)), 0);
	t0 = now_ms();
	for (size_t i = 0; i < n; i++) {
		if (i == n - 1) {
			/* the hello is one byte short: nothing can be routed yet */
			expect_accepted(0, 0, "before the hello's last byte");
			cr_assert_eq(recv(fd, &c, 1, MSG_DONTWAIT), -1, "a byte came back early");
			cr_assert_eq(errno, EAGAIN, "recv: %s", strerror(errno));
		}
		cr_assert_eq(io_write_all(fd, hello_openssl_a_test + i, 1, 1000, &got), IO_DONE,
			     "byte %zu", i);
		sleep_ms(5);
	}
	ms = now_ms() - t0;
	/* 312 bytes x 5 ms: about 1.6 s, well inside the 5 s sni-timeout */
	cr_assert_geq(ms, 5 * (n - 1), "sent in %llu ms: not trickled", (unsigned long long)ms);
	cr_assert_lt(ms, 4000, "trickling took %llu ms: too close to the 5 s sni-timeout",
		     (unsigned long long)ms);
	cr_assert_eq(io_read_exact(fd, back, n, 2000, &got), IO_DONE, "%zu of %zu bytes echoed", got,
		     n);
	cr_assert_eq(memcmp(back, hello_openssl_a_test, n), 0, "the hello came back changed");
	close(fd);
	expect_accepted(1, 0, "trickled hello");
}

/* sni-timeout 300: a client that sends half a ClientHello and stops is closed 300 ms after it
 * connected (timer ticks are 10 ms; 200 ms margin), with no byte back and no upstream
 * connection: a half hello is TLS, so the sni-missing default pool does not apply. */
Test(sni, half_hello_is_closed_at_sni_timeout, .init = raw_init, .fini = sni_fini,
     .timeout = 30) /* serial */
{
	uint64_t t0, ms, extra = 0;
	enum io_end r;
	size_t got = 0;
	int fd;

	echo_proxy_start("default", 300);
	t0 = now_ms();
	fd = raw_connect();
	cr_assert_eq(io_write_all(fd, hello_openssl_a_test, sizeof(hello_openssl_a_test) / 2, 1000,
				  &got),
		     IO_DONE);
	r = io_wait_close(fd, 2000, &extra);
	ms = now_ms() - t0;
	cr_assert(r == IO_EOF || r == IO_RESET, "half hello: not closed within 2 s (%s)",
		  io_end_name(r));
	cr_assert_eq(extra, 0, "half hello: %llu bytes came back", (unsigned long long)extra);
	/* the deadline starts at the accept, after t0; 10 ms for clock rounding below */
	cr_assert_geq(ms, 290, "closed after %llu ms: before the 300 ms sni-timeout",
		      (unsigned long long)ms);
	cr_assert_leq(ms, 500, "closed after %llu ms: want 300 ms + 200 ms margin",
		      (unsigned long long)ms);
	cr_log_info("half hello closed after %llu ms (sni-timeout 300)", (unsigned long long)ms);
	close(fd);
	expect_accepted(0, 0, "half hello");
	assert_proxy_idle(&px, 2000, "after the half hello");
}

/* A TLS-looking ClientHello claiming 17 KiB (over the 16 KiB bound), followed by 17 KiB of
 * garbage, is closed within 1 s (the sni-timeout is 5 s: the size rule closes it), with no byte
 * back and no upstream connection, the sni-missing default pool notwithstanding. */
Test(sni, hello_over_16_kib_is_closed, .init = raw_init, .fini = sni_fini, .timeout = 30)
{
	static const uint8_t head[] = { 0x16, 0x03, 0x01, 0x40, 0x00, /* record: 16 KiB */
					0x01, 0x00, 0x44, 0x00 }; /* ClientHello: 17 KiB */
	static uint8_t big[17 * KIB];
	uint64_t ms;
	int fd;

	fill_random(big, sizeof(big), 0x17b, 0);
	memcpy(big, head, sizeof(head));
	echo_proxy_start("default", 5000);
	fd = raw_connect();
	ms = expect_closed_after(fd, big, sizeof(big), 1000, "17 KiB hello");
	cr_log_info("17 KiB hello closed after %llu ms", (unsigned long long)ms);
	close(fd);
	expect_accepted(0, 0, "17 KiB hello");
	assert_proxy_idle(&px, 2000, "after the 17 KiB hello");
}

/* Every byte is forwarded unchanged after the choice: a captured ClientHello for a.test and
 * 1 MiB after it (the first write holds the hello and 64 KiB - 312 bytes of data together) come
 * back from the a.test pool's echo backend identical, length and hash. */
Test(sni, every_byte_is_forwarded_unchanged, .init = raw_init, .fini = sni_fini, .timeout = 30)
{
	struct duplex d;
	int fd;

	echo_proxy_start("default", 5000);
	fd = raw_connect();
	duplex_run(&d, fd, hello_openssl_a_test, sizeof(hello_openssl_a_test), 0xb17e, 1 * MIB,
		   20000);
	cr_assert_eq(d.end, IO_EOF, "%s after %llu sent, %llu back", io_end_name(d.end),
		     (unsigned long long)d.sent, (unsigned long long)d.got);
	cr_assert_eq(d.sent, sizeof(hello_openssl_a_test) + 1 * MIB);
	cr_assert_eq(d.got, d.sent, "%llu bytes back of %llu", (unsigned long long)d.got,
		     (unsigned long long)d.sent);
	cr_assert_eq(d.got_hash, d.sent_hash, "the bytes came back changed");
	cr_assert_eq(d.sent_hash, sent_hash(hello_openssl_a_test, sizeof(hello_openssl_a_test),
					    0xb17e, 1 * MIB));
	close(fd);
	expect_accepted(1, 0, "hello + 1 MiB");
	assert_proxy_idle(&px, 2000, "after hello + 1 MiB");
}

/* uproxy_sni_routed_total{listener="tls"} counts the sessions whose server name matched a
 * route: of a hello for www.example.com (no route: the default pool), one without SNI, a
 * plain-text client and a hello for A.Test (route a.test), only the last. Read once all four
 * sessions are closed and counted, so the snapshot holds each one's routing. */
Test(sni, routed_counts_matched_names_only, .init = raw_init, .fini = sni_fini, .timeout = 30)
{
	static const char plain[] = "GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n";
	static const struct {
		const void *buf;
		size_t n;
		int a, dflt; /* accepted by each pool once it is done */
		const char *what;
	} c[] = {
		{ hello_openssl_tls12_www, sizeof(hello_openssl_tls12_www), 0, 1,
		  "www.example.com (no route)" },
		{ hello_openssl_nosni, sizeof(hello_openssl_nosni), 0, 2, "a hello without SNI" },
		{ plain, sizeof(plain) - 1, 0, 3, "plain text" },
		{ hello_openssl_a_test, sizeof(hello_openssl_a_test), 1, 3, "A.Test (route a.test)" },
	};
	static struct mset m;
	uint64_t deadline;
	double closed = 0, routed;

	stats_port = free_port();
	echo_proxy_start("default", 5000);
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		uint8_t back[512];
		size_t got = 0;
		int fd = raw_connect();

		cr_assert_eq(io_write_all(fd, c[i].buf, c[i].n, 2000, &got), IO_DONE, "%s: sent %zu "
			     "of %zu bytes", c[i].what, got, c[i].n);
		cr_assert_eq(io_read_exact(fd, back, c[i].n, 2000, &got), IO_DONE,
			     "%s: echoed %zu of %zu bytes", c[i].what, got, c[i].n);
		cr_assert_eq(memcmp(back, c[i].buf, c[i].n), 0, "%s: the echo differs", c[i].what);
		close(fd);
		expect_accepted(c[i].a, c[i].dflt, c[i].what);
	}
	deadline = now_ms() + 2000;
	for (;;) {
		metrics_scrape(stats_port, &m);
		metrics_sum(&m, "uproxy_connections_closed_total",
			    (const char *const[]){ "listener=\"tls\"", NULL }, &closed);
		if (closed == 4 || now_ms() >= deadline)
			break;
		sleep_ms(20);
	}
	cr_assert_eq(closed, 4, "uproxy_connections_closed_total{listener=\"tls\"} is %g 2 s "
		     "after the 4 sessions ended, want 4", closed);
	routed = metrics_val(&m, "uproxy_sni_routed_total{listener=\"tls\"}");
	cr_assert_eq(routed, 1, "uproxy_sni_routed_total{listener=\"tls\"} is %g, want 1: only "
		     "A.Test matched a route (not www.example.com, no SNI, plain text)", routed);
	assert_proxy_idle(&px, 2000, "after the four sessions");
}
