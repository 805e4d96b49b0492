/* TCP keepalive per side (--keepalive-client, keepalive-upstream IDLE:INTERVAL:COUNT seconds, or
 * off) through the real binary:
 *  - bad values exit 2 naming the option (and FILE:LINE in a config file); good ones pass
 *    --check;
 *  - the proxy's sockets carry the keepalive timer, each side its own idle time, read from
 *    outside in /proc/net/tcp (the "tr" field is 2 when sk_timer, the keepalive timer on an
 *    established socket, is pending; tm->when is its remaining time in 1/100 s), and none
 *    without the option;
 *  - a peer that vanishes silently (its veth taken down in a network namespace this file
 *    creates: no FIN, no RST, no answer to probes) is found after idle + interval x count
 *    seconds: the session is closed, counted and access-logged, and the proxy is back to its
 *    baseline fds; without keepalive the same session is still open, and still works, at 6 s.
 *
 * The namespace tests need `ip netns` (iproute2, root): they skip, saying so, only when it is
 * unavailable. Each test makes its own namespace and veth pair named after its pid, with a /30
 * from 198.18.0.0/15 (RFC 2544's benchmarking range: never a real network here), and removes
 * them in .fini, passed or not. */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* The design figure: --keepalive-* 1:1:2 finds a dead peer idle + interval x count = 3 s after
 * the last thing it heard from it. The kernel's timers never fire early (bar one jiffy of
 * rounding, < 20 ms); late by scheduling on a loaded 2-CPU machine and the proxy's teardown,
 * well under the 1.5 s margin. */
#define KA_SPEC	     "1:1:2"
#define KA_DEAD_MS   3000
#define KA_EARLY_MS  20
#define KA_MARGIN_MS 1500
/* How long a session without keepalive must survive its vanished peer. */
#define NO_KA_MS 6000

/* ---- shell commands ------------------------------------------------------- */

/* Runs a shell command; its output (stdout and stderr, at most len - 1 bytes) in out. Returns
 * its exit status, or -1 if it could not run. */
static int sh_out(char *out, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int sh_out(char *out, size_t len, const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	FILE *f;
	size_t n = 0;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	strncat(cmd, " 2>&1", sizeof(cmd) - strlen(cmd) - 1);
	f = popen(cmd, "r");
	if (f == NULL)
		return -1;
	if (out != NULL && len > 0) {
		n = fread(out, 1, len - 1, f);
		out[n] = '\0';
	} else {
		char sink[256];

		while (fread(sink, 1, sizeof(sink), f) > 0)
			;
	}
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- a vanishing peer: a network namespace behind a veth pair -------------- */

struct vnet {
	char ns[32];
	char host_if[16], peer_if[16]; /* in our namespace, in ns */
	char host_ip[16], peer_ip[16];
	bool ns_made, link_made;
};

static struct vnet vn;

#define SH_OK(...)                                                                                 \
	do {                                                                                       \
		char o_[1024];                                                                     \
		int r_ = sh_out(o_, sizeof(o_), __VA_ARGS__);                                      \
		cr_assert_eq(r_, 0, "network namespace set-up step failed (exit %d): %s", r_, o_); \
	} while (0)

/* Makes the namespace, the veth pair and the addresses; skips the test when `ip netns` is
 * unavailable, fails on any other problem. */
static void vnet_make(void)
{
	char out[512];
	int pid = (int)getpid();

	if (sh_out(out, sizeof(out), "ip netns list") != 0)
		cr_skip_test("`ip netns` is unavailable (%s): cannot make a peer vanish silently "
			     "(needs iproute2 and root)",
			     out[0] ? out : "no output");
	snprintf(vn.ns, sizeof(vn.ns), "uproxy-ka-%d", pid);
	snprintf(vn.host_if, sizeof(vn.host_if), "ukah%d", pid);
	snprintf(vn.peer_if, sizeof(vn.peer_if), "ukap%d", pid);
	/* A /30 in 198.18.0.0/16 not already on this host. */
	for (int k = 0;; k++) {
		uint32_t net =
			0xc6120000u + (((uint32_t)pid * 4u + (uint32_t)k * 7919u * 4u) & 0xfffcu);
		struct in_addr h = { htonl(net + 1) }, p = { htonl(net + 2) };

		cr_assert_lt(k, 64, "no free /30 in 198.18.0.0/16");
		inet_ntop(AF_INET, &h, vn.host_ip, sizeof(vn.host_ip));
		inet_ntop(AF_INET, &p, vn.peer_ip, sizeof(vn.peer_ip));
		if (sh_out(out, sizeof(out), "ip -o -4 addr show to %s/30", vn.host_ip) == 0 &&
		    out[0] == '\0')
			break;
	}
	SH_OK("ip netns add %s", vn.ns);
	vn.ns_made = true;
	SH_OK("ip link add %s type veth peer name %s netns %s", vn.host_if, vn.peer_if, vn.ns);
	vn.link_made = true;
	SH_OK("ip addr add %s/30 dev %s && ip link set %s up", vn.host_ip, vn.host_if, vn.host_if);
	SH_OK("ip -n %s addr add %s/30 dev %s && ip -n %s link set %s up && ip -n %s link set lo "
	      "up",
	      vn.ns, vn.peer_ip, vn.peer_if, vn.ns, vn.peer_if, vn.ns);
	/* carrier on both ends */
	for (int i = 0;; i++) {
		char path[64];

		snprintf(path, sizeof(path), "/sys/class/net/%s/carrier", vn.host_if);
		size_t len = 0;
		char *c = file_read_all(path, &len);
		bool up = len > 0 && c[0] == '1';

		free(c);
		if (up)
			break;
		cr_assert_lt(i, 100, "veth %s has no carrier after 2 s", vn.host_if);
		sleep_ms(20);
	}
}

/* .fini: removes the veth pair (both ends) and the namespace, whatever happened. */
static void vnet_remove(void)
{
	if (vn.link_made)
		sh_out(NULL, 0, "ip link del %s", vn.host_if);
	if (vn.ns_made)
		sh_out(NULL, 0, "ip netns del %s", vn.ns);
	vn.link_made = vn.ns_made = false;
}

/* The peer's end down: whatever our side sends is lost, nothing comes back, no RST, no FIN. */
static void vnet_peer_link(bool up)
{
	SH_OK("ip -n %s link set %s %s", vn.ns, vn.peer_if, up ? "up" : "down");
}

/* A TCP socket (non-blocking) in the namespace: setns for this thread only, and back. */
static int ns_socket(void)
{
	char path[96];
	int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC), nsfd, fd, err;

	snprintf(path, sizeof(path), "/run/netns/%s", vn.ns);
	nsfd = open(path, O_RDONLY | O_CLOEXEC);
	cr_assert(self >= 0 && nsfd >= 0, "open the namespaces: %s", strerror(errno));
	cr_assert_eq(setns(nsfd, CLONE_NEWNET), 0, "setns into %s: %s", vn.ns, strerror(errno));
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	err = errno;
	cr_assert_eq(setns(self, CLONE_NEWNET), 0, "setns back: %s", strerror(errno));
	close(self);
	close(nsfd);
	cr_assert_geq(fd, 0, "socket in %s: %s", vn.ns, strerror(err));
	return fd;
}

/* Connects fd (non-blocking) to ip:port within timeout_ms; asserts. */
static void connect_ip(int fd, const char *ip, uint16_t port, int timeout_ms)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	int err = 0;
	socklen_t el = sizeof(err);

	inet_pton(AF_INET, ip, &a.sin_addr);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
		return;
	cr_assert_eq(errno, EINPROGRESS, "connect to %s:%u: %s", ip, port, strerror(errno));
	cr_assert_eq(poll(&p, 1, timeout_ms), 1, "connect to %s:%u: no answer in %d ms", ip, port,
		     timeout_ms);
	getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
	cr_assert_eq(err, 0, "connect to %s:%u: %s", ip, port, strerror(err));
}

/* An echo backend on 127.0.0.1 (any port), running; its address for -u in up. */
static void echo_upstream(struct backend *b, char *up, size_t len)
{
	backend_bind(b, AF_INET);
	backend_run(b, BK_ECHO);
	snprintf(up, len, "127.0.0.1:%u", b->port);
}

/* An echo backend listening in the namespace on peer_ip (any port). */
static void ns_backend(struct backend *b)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	int fd = ns_socket();

	set_nonblock(fd, false);
	inet_pton(AF_INET, vn.peer_ip, &a.sin_addr);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0, "bind %s: %s", vn.peer_ip,
		     strerror(errno));
	backend_adopt(b, fd);
	backend_run(b, BK_ECHO);
}

/* ---- what the proxy reports ------------------------------------------------- */

/* Asserts a vanished peer's session was closed (at t_closed) no earlier than idle + interval x
 * count after the last exchange began (t_sent), and within the margin after it ended
 * (t_last). */
static void expect_found_in_time(uint64_t t_sent, uint64_t t_last, uint64_t t_closed)
{
	cr_assert_geq(t_closed - t_sent, KA_DEAD_MS - KA_EARLY_MS,
		      "closed %llu ms after the last exchange began: before idle + interval x "
		      "count = %d ms",
		      (unsigned long long)(t_closed - t_sent), KA_DEAD_MS);
	cr_assert_leq(t_closed - t_last, KA_DEAD_MS + KA_MARGIN_MS,
		      "closed %llu ms after the last exchange, want ≤ %d + %d ms",
		      (unsigned long long)(t_closed - t_last), KA_DEAD_MS, KA_MARGIN_MS);
}

/* The sum of every sample of the counter uproxy_connections_closed_total whose labels hold
 * reason="reason" (whatever other labels, such as listener, it has). */
static double closed_total(uint16_t stats_port, const char *reason)
{
	static struct mset m;
	char want[64];
	double sum = 0;

	snprintf(want, sizeof(want), "reason=\"%s\"", reason);
	metrics_scrape(stats_port, &m);
	metrics_sum(&m, "uproxy_connections_closed_total", (const char *const[]){ want, NULL },
		    &sum);
	return sum;
}

/* Waits (≤ 1 s: the snapshots are republished often) until closed_total grows by want. */
static void expect_closed(uint16_t stats_port, const char *reason, double before, double want)
{
	double d = 0;

	for (int i = 0; i < 50; i++) {
		d = closed_total(stats_port, reason) - before;
		if (d >= want)
			break;
		sleep_ms(20);
	}
	cr_assert_eq(d, want, "uproxy_connections_closed_total{reason=\"%s\"} grew by %g, want %g",
		     reason, d, want);
}

/* Waits (≤ timeout_ms) for the access-log line holding needle; asserts it holds also. */
static void expect_alog(const char *needle, const char *also, int timeout_ms)
{
	char line[1024];

	alog_wait_line(needle, timeout_ms, line, sizeof(line));
	cr_assert_not_null(strstr(line, also), "access-log line without '%s': %s", also, line);
}

/* ---- /proc/net/tcp ------------------------------------------------------------ */

struct tcp_row {
	uint16_t lport, rport;
	unsigned int st; /* 0x01 ESTABLISHED */
	unsigned int tr; /* 0 none, 1 retransmit, 2 sk_timer (keepalive), 3 TIME_WAIT, 4 probe0 */
	unsigned long when; /* remaining, in 1/100 s */
};

#define TCP_ESTABLISHED_ST 0x01

/* The one established socket (IPv4 or IPv6 table) with local port lport (0: any) and remote
 * port rport, that is not also local port skip_lport. Returns the number of matches; fills
 * *out with the last. */
static int tcp_find(uint16_t lport, uint16_t rport, uint16_t skip_lport, struct tcp_row *out)
{
	static const char *const files[] = { "/proc/net/tcp", "/proc/net/tcp6" };
	int found = 0;

	for (int f = 0; f < 2; f++) {
		FILE *fp = fopen(files[f], "r");
		char line[512];

		if (fp == NULL)
			continue;
		if (fgets(line, sizeof(line), fp) == NULL) { /* the header */
			fclose(fp);
			continue;
		}
		while (fgets(line, sizeof(line), fp)) {
			char local[64], remote[64];
			unsigned int st, tr, lp, rp;
			unsigned long when, inode;
			char *c;

			if (sscanf(line, " %*d: %63s %63s %x %*x:%*x %x:%lx %*x %*u %*u %lu", local,
				   remote, &st, &tr, &when, &inode) != 6)
				continue;
			c = strchr(local, ':');
			if (c == NULL || sscanf(c + 1, "%x", &lp) != 1)
				continue;
			c = strchr(remote, ':');
			if (c == NULL || sscanf(c + 1, "%x", &rp) != 1)
				continue;
			if (st != TCP_ESTABLISHED_ST || inode == 0 || rp != rport ||
			    (lport && lp != lport) || (skip_lport && lp == skip_lport))
				continue;
			found++;
			*out = (struct tcp_row){ (uint16_t)lp, (uint16_t)rp, st, tr, when };
		}
		fclose(fp);
	}
	return found;
}

/* The proxy's socket for one session side: exactly one must exist. Waits (≤ 1 s) until it
 * has no retransmit timer pending (the last bytes it sent are acknowledged), so tr shows the
 * keepalive timer or nothing. */
static struct tcp_row proxy_sock(uint16_t lport, uint16_t rport, uint16_t skip_lport,
				 const char *what)
{
	struct tcp_row r;
	int n;

	for (int i = 0;; i++) {
		n = tcp_find(lport, rport, skip_lport, &r);
		cr_assert_eq(n, 1, "%s: %d established sockets in /proc/net/tcp, want 1", what, n);
		if (r.tr != 1)
			return r;
		cr_assert_lt(i, 50, "%s: retransmit timer still pending after 1 s", what);
		sleep_ms(20);
	}
}

/* ---- option values ------------------------------------------------------------ */

static const char *const bad_values[] = {
	"0:1:2",	   /* zero idle */
	"1:0:2",	   /* zero interval */
	"1:1:0",	   /* zero count */
	"1:1",		   /* a part missing */
	"1",		   /* two missing */
	"",		   /* all */
	"1::2",		   /* an empty part */
	":1:2",		   /* an empty part */
	"1:1:",		   /* an empty part */
	"1:1:2:3",	   /* one too many */
	"a:b:c",	   /* not numbers */
	"-1:1:2",	   /* negative */
	"1:1:2s",	   /* trailing junk */
	"on",		   /* neither off nor a spec */
	"32768:1:1",	   /* idle above the kernel's TCP_KEEPIDLE limit (32767 s) */
	"1:32768:1",	   /* interval above TCP_KEEPINTVL's (32767 s) */
	"1:1:128",	   /* count above TCP_KEEPCNT's (127) */
	"99999999999:1:1", /* overflows 32 bits */
};

Test(keepalive, bad_values_exit_2, .timeout = 120)
{
	static const char *const opts[] = { "--keepalive-client", "--keepalive-upstream" };
	char listen[32], up[32];

	snprintf(listen, sizeof(listen), "127.0.0.1:%u", free_port());
	snprintf(up, sizeof(up), "127.0.0.1:%u", free_port());
	for (size_t o = 0; o < 2; o++) {
		for (size_t i = 0; i < sizeof(bad_values) / sizeof(bad_values[0]); i++) {
			const char *args[] = { "--listen", listen,	  "-u", up,
					       opts[o],	   bad_values[i], NULL };
			struct run_result r;

			run_uproxy(&r, 3000, args);
			cr_assert(r.exited && r.code == 2,
				  "%s '%s': want exit 2, got %s %d; stderr:\n%s", opts[o],
				  bad_values[i], r.exited ? "exit" : "still running after 3 s",
				  r.code, r.err);
			cr_assert_not_null(
				strstr(r.err, opts[o] + 2),
				"%s '%s': exit 2, but stderr does not name the option:\n%s",
				opts[o], bad_values[i], r.err);
			run_result_free(&r);
		}
	}
}

Test(keepalive, bad_values_in_a_config_file_name_file_and_line, .fini = conf_dir_remove,
     .timeout = 30)
{
	char dir[64], path[128], where[160];
	const char *args[] = { "--config", path, NULL };
	static const struct {
		const char *fmt; /* %u: listen port, %u: upstream port */
		int line;
		const char *opt;
	} cases[] = {
		{ "workers 1\nlisten 127.0.0.1:%u\nupstream 127.0.0.1:%u\nkeepalive-client 1:1\n",
		  4, "keepalive-client" },
		{ "# top-level default for every listener\nkeepalive-upstream 0:1:1\n"
		  "listen 127.0.0.1:%u\nupstream 127.0.0.1:%u\n",
		  2, "keepalive-upstream" },
		{ "workers 1\n\n[listener web]\nlisten 127.0.0.1:%u\nupstream 127.0.0.1:%u\n"
		  "keepalive-upstream 5:0:3\n",
		  6, "keepalive-upstream" },
		{ "[listener web]\nlisten 127.0.0.1:%u\nupstream 127.0.0.1:%u\n"
		  "keepalive-client 1:1:128\n",
		  4, "keepalive-client" },
	};

	conf_dir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/uproxy.conf", dir);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct run_result r;

		file_write_atomic(path, cases[i].fmt, free_port(), free_port());
		snprintf(where, sizeof(where), "uproxy.conf:%d", cases[i].line);
		run_uproxy(&r, 3000, args);
		cr_assert(r.exited && r.code == 2, "case %zu: want exit 2, got %s %d; stderr:\n%s",
			  i, r.exited ? "exit" : "still running after 3 s", r.code, r.err);
		cr_assert_not_null(strstr(r.err, where), "case %zu: stderr does not say '%s':\n%s",
				   i, where, r.err);
		cr_assert_not_null(strstr(r.err, cases[i].opt),
				   "case %zu: stderr does not name %s:\n%s", i, cases[i].opt,
				   r.err);
		run_result_free(&r);
	}
}

Test(keepalive, good_values_pass_check, .timeout = 30)
{
	static const char *const good[] = { "off", "1:1:2", "60:10:6", "32767:32767:127" };
	char listen[32], up[32];

	snprintf(listen, sizeof(listen), "127.0.0.1:%u", free_port());
	snprintf(up, sizeof(up), "127.0.0.1:%u", free_port());
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		const char *args[] = { "--check", "--listen",
				       listen,	  "-u",
				       up,	  "--keepalive-client",
				       good[i],	  "--keepalive-upstream",
				       good[i],	  NULL };
		struct run_result r;

		run_uproxy(&r, 3000, args);
		cr_assert(r.exited && r.code == 0,
			  "--keepalive-* %s --check: want exit 0, got %s %d;"
			  " stderr:\n%s",
			  good[i], r.exited ? "exit" : "still running", r.code, r.err);
		cr_assert_not_null(strstr(r.out, "configuration OK"), "--check %s: stdout:\n%s",
				   good[i], r.out);
		run_result_free(&r);
	}
}

/* ---- the timers, seen from outside ---------------------------------------------- */

/* One session through px to echo: the proxy's client-side and upstream-side sockets. */
struct sess {
	int fd;
	uint64_t t_conn;
	struct tcp_row client_side, upstream_side;
};

/* Opens a session, checks it echoes, and reads the proxy's two sockets for it. */
static void sess_open(struct sess *s, const struct proxy *px, const struct backend *echo,
		      uint64_t seed, const char *what)
{
	char w[96];

	s->fd = tcp_connect(AF_INET, px->port, 2000);
	cr_assert_geq(s->fd, 0, "%s: connect: %s", what, strerror(errno));
	s->t_conn = now_ms();
	cr_assert(echo_roundtrip(s->fd, seed, 64, 3000), "%s: echo through the proxy", what);
	snprintf(w, sizeof(w), "%s, client side", what);
	s->client_side = proxy_sock(px->port, sock_local_port(s->fd), 0, w);
	snprintf(w, sizeof(w), "%s, upstream side", what);
	s->upstream_side = proxy_sock(0, echo->port, echo->port, w);
}

Test(keepalive, timers_armed_per_side, .timeout = 30)
{
	struct backend ek, en, eo;
	struct proxy pk, pn, po;
	struct sess sk, sn, so;
	char uk[32], un[32], uo[32];
	const char *ak[] = { "-u",
			     uk,
			     "--keepalive-client",
			     "1:1:2",
			     "--keepalive-upstream",
			     "3:1:2",
			     "--workers",
			     "1",
			     NULL };
	const char *an[] = { "-u", un, "--workers", "1", NULL };
	const char *ao[] = {
		"-u", uo,  "--keepalive-client", "off", "--keepalive-upstream", "off", "--workers",
		"1",  NULL
	};
	uint64_t age;

	echo_upstream(&ek, uk, sizeof(uk));
	echo_upstream(&en, un, sizeof(un));
	echo_upstream(&eo, uo, sizeof(uo));
	proxy_spawn_listen(&pk, "127.0.0.1", ek.port, ak, NULL, NULL);
	proxy_spawn_listen(&pn, "127.0.0.1", en.port, an, NULL, NULL);
	proxy_spawn_listen(&po, "127.0.0.1", eo.port, ao, NULL, NULL);

	sess_open(&sk, &pk, &ek, 0xa1, "keepalive 1:1:2 / 3:1:2");
	age = now_ms() - sk.t_conn;
	cr_log_info("client side tr=%u when=%lu, upstream side tr=%u when=%lu, %llu ms after "
		    "connect",
		    sk.client_side.tr, sk.client_side.when, sk.upstream_side.tr,
		    sk.upstream_side.when, (unsigned long long)age);
	cr_assert_lt(age, 1500, "reading the sockets took %llu ms", (unsigned long long)age);
	cr_assert_eq(sk.client_side.tr, 2,
		     "--keepalive-client 1:1:2: the proxy's client socket "
		     "has no keepalive timer (tr=%u)",
		     sk.client_side.tr);
	cr_assert_eq(sk.upstream_side.tr, 2,
		     "--keepalive-upstream 3:1:2: the proxy's upstream "
		     "socket has no keepalive timer (tr=%u)",
		     sk.upstream_side.tr);
	/* Each side its own idle time: ≤ 1 s left on the client side; on the upstream side, armed
	 * for 3 s at most `age` ago, more than 1.5 s left. */
	cr_assert_leq(sk.client_side.when, 101, "client side: %lu/100 s left, idle is 1 s",
		      sk.client_side.when);
	cr_assert_leq(sk.upstream_side.when, 301, "upstream side: %lu/100 s left, idle is 3 s",
		      sk.upstream_side.when);
	cr_assert_geq(sk.upstream_side.when, 150,
		      "upstream side: only %lu/100 s left %llu ms "
		      "after connect: not the 3 s idle of --keepalive-upstream",
		      sk.upstream_side.when, (unsigned long long)age);

	sess_open(&sn, &pn, &en, 0xa2, "no keepalive options");
	sess_open(&so, &po, &eo, 0xa3, "keepalive off");
	cr_assert_eq(sn.client_side.tr, 0, "default: client socket timer tr=%u", sn.client_side.tr);
	cr_assert_eq(sn.upstream_side.tr, 0, "default: upstream socket timer tr=%u",
		     sn.upstream_side.tr);
	cr_assert_eq(so.client_side.tr, 0, "off: client socket timer tr=%u", so.client_side.tr);
	cr_assert_eq(so.upstream_side.tr, 0, "off: upstream socket timer tr=%u",
		     so.upstream_side.tr);

	/* A live peer answers the probes: 2.5 s idle (probes at 1 s and 2 s on the client side)
	 * and the session still works, its timer still armed. */
	sleep_ms(2500);
	cr_assert(echo_roundtrip(sk.fd, 0xb1, 64, 3000), "keepalive probes answered by a live "
							 "peer, yet the session no longer works");
	cr_assert_eq(proxy_sock(pk.port, sock_local_port(sk.fd), 0, "after 2.5 s idle").tr, 2);

	close(sk.fd);
	close(sn.fd);
	close(so.fd);
	assert_proxy_idle(&pk, 2000, "after the sessions");
	assert_proxy_idle(&pn, 2000, "after the sessions");
	assert_proxy_idle(&po, 2000, "after the sessions");
	cr_assert(proxy_stop(&pk));
	cr_assert(proxy_stop(&pn));
	cr_assert(proxy_stop(&po));
	backend_stop(&ek);
	backend_stop(&en);
	backend_stop(&eo);
}

/* ---- vanishing peers -------------------------------------------------------------- */

/* .init of the vanishing-peer tests: their access log. */
static void ka_init(void)
{
	alog_make();
}

/* .fini: the namespace, the access log and the config directory, passed or not. */
static void ka_fini(void)
{
	vnet_remove();
	alog_remove();
	conf_dir_remove();
}

/* The client is in the namespace and vanishes: the proxy with --keepalive-client 1:1:2 closes
 * the session 3 s after it last heard from it; the one without keeps it. */
Test(keepalive, client_vanishes, .init = ka_init, .fini = ka_fini, .timeout = 40)
{
	struct backend ek, en;
	struct proxy pk, pn;
	char uk[32], un[32], stats[32], needle[64];
	uint16_t sport = free_port();
	const char *ak[] = { "-u",	uk,    "--keepalive-client", KA_SPEC,	"--workers", "1",
			     "--stats", stats, "--access-log",	     alog_path, NULL };
	const char *an[] = { "-u", un, "--workers", "1", NULL };
	int ck, cn;
	uint64_t t_sent, t_last, t_closed;
	double reset0;
	struct pollfd p;

	vnet_make();
	echo_upstream(&ek, uk, sizeof(uk));
	echo_upstream(&en, un, sizeof(un));
	snprintf(stats, sizeof(stats), "127.0.0.1:%u", sport);
	proxy_spawn_listen(&pk, vn.host_ip, ek.port, ak, NULL, NULL);
	proxy_spawn_listen(&pn, vn.host_ip, en.port, an, NULL, NULL);

	ck = ns_socket();
	cn = ns_socket();
	connect_ip(ck, vn.host_ip, pk.port, 2000);
	connect_ip(cn, vn.host_ip, pn.port, 2000);
	reset0 = closed_total(sport, "client_reset");
	t_sent = now_ms();
	cr_assert(echo_roundtrip(ck, 0xc1, 64, 3000), "echo through the keepalive proxy");
	cr_assert(echo_roundtrip(cn, 0xc2, 64, 3000), "echo through the plain proxy");
	t_last = now_ms();
	cr_assert_eq(atomic_load(&ek.open), 1);
	cr_assert_eq(atomic_load(&en.open), 1);

	/* The clients vanish. */
	vnet_peer_link(false);
	while (atomic_load(&ek.open) > 0 && now_ms() < t_last + NO_KA_MS)
		sleep_ms(5);
	t_closed = now_ms();
	cr_assert_eq(atomic_load(&ek.open), 0,
		     "--keepalive-client %s: the session with a "
		     "vanished client is still open %d ms later (want closed at ~%d ms)",
		     KA_SPEC, NO_KA_MS, KA_DEAD_MS);
	cr_log_info("vanished client: session closed %llu ms after the last exchange",
		    (unsigned long long)(t_closed - t_last));
	expect_found_in_time(t_sent, t_last, t_closed);
	/* counted, logged, and nothing left behind */
	expect_closed(sport, "client_reset", reset0, 1);
	snprintf(needle, sizeof(needle), " client=%s:%u ", vn.peer_ip, sock_local_port(ck));
	expect_alog(needle, " reason=client_reset ", 2000);
	assert_proxy_idle(&pk, 2000, "after keepalive closed the vanished client's session");

	/* Without keepalive the same session is still open at 6 s ... */
	while (now_ms() < t_last + NO_KA_MS)
		sleep_ms(50);
	cr_assert_eq(atomic_load(&en.open), 1,
		     "no keepalive: the upstream connection was "
		     "closed within %d ms of a silent client",
		     NO_KA_MS);
	cr_assert_eq(proxy_sock_count(pn.port, en.port), 2,
		     "no keepalive: the proxy no longer "
		     "holds both sockets of the session at %d ms",
		     NO_KA_MS);
	p = (struct pollfd){ .fd = cn, .events = POLLIN };
	cr_assert_eq(poll(&p, 1, 0), 0, "no keepalive: the client got an event (revents %#x)",
		     p.revents);
	/* ... and works once the client is reachable again. */
	vnet_peer_link(true);
	cr_assert(echo_roundtrip(cn, 0xc3, 64, 5000), "no keepalive: the session does not work "
						      "once the client is back");
	close(cn);
	close(ck);
	assert_proxy_idle(&pn, 2000, "after the surviving session ended");
	cr_assert(proxy_stop(&pk));
	cr_assert(proxy_stop(&pn));
	backend_stop(&ek);
	backend_stop(&en);
}

struct ka_conf {
	char path[128];
	const char *upstream_ip;
	uint16_t upstream_port;
};

/* The keepalive proxy's config file: keepalive-upstream set in the file. */
static void write_ka_conf(uint16_t port, void *arg)
{
	const struct ka_conf *c = arg;

	file_write_atomic(c->path,
			  "# a vanishing upstream is found by TCP keepalive\n"
			  "workers 1\n"
			  "listen 127.0.0.1:%u\n"
			  "upstream %s:%u\n"
			  "keepalive-upstream %s\n",
			  port, c->upstream_ip, c->upstream_port, KA_SPEC);
}

/* The upstream is in the namespace and vanishes: keepalive-upstream 1:1:2 (from a config
 * file) closes the session 3 s after it last heard from it, and the client gets a reset; the
 * proxy without keeps it. */
Test(keepalive, upstream_vanishes, .init = ka_init, .fini = ka_fini, .timeout = 40)
{
	struct backend uk, un;
	struct proxy pk, pn;
	struct ka_conf conf;
	char dir[64], stats[32], upn[48], line[1024];
	uint16_t sport = free_port(), cport;
	const char *ak[] = { "--config",     conf.path, "--stats", stats,
			     "--access-log", alog_path, NULL };
	const char *an[] = { "-u", upn, "--workers", "1", NULL };
	int ck, cn;
	uint64_t t_sent, t_last, t_closed, extra = 0;
	double reset0;
	enum io_end e;
	struct pollfd p;

	vnet_make();
	ns_backend(&uk);
	ns_backend(&un);
	conf_dir_make(dir, sizeof(dir));
	snprintf(conf.path, sizeof(conf.path), "%s/uproxy.conf", dir);
	conf.upstream_ip = vn.peer_ip;
	conf.upstream_port = uk.port;
	snprintf(stats, sizeof(stats), "127.0.0.1:%u", sport);
	snprintf(upn, sizeof(upn), "%s:%u", vn.peer_ip, un.port);
	proxy_spawn_listen(&pk, NULL, uk.port, ak, write_ka_conf, &conf);
	proxy_spawn_listen(&pn, "127.0.0.1", un.port, an, NULL, NULL);

	ck = tcp_connect(AF_INET, pk.port, 2000);
	cn = tcp_connect(AF_INET, pn.port, 2000);
	cr_assert(ck >= 0 && cn >= 0, "connect to the proxies: %s", strerror(errno));
	cport = sock_local_port(ck);
	reset0 = closed_total(sport, "upstream_reset");
	t_sent = now_ms();
	cr_assert(echo_roundtrip(ck, 0xd1, 64, 3000), "echo through the keepalive proxy");
	cr_assert(echo_roundtrip(cn, 0xd2, 64, 3000), "echo through the plain proxy");
	t_last = now_ms();

	/* The upstreams vanish. */
	vnet_peer_link(false);
	e = io_wait_close(ck, NO_KA_MS, &extra);
	t_closed = now_ms();
	cr_assert(e == IO_RESET || e == IO_EOF,
		  "keepalive-upstream %s: the client of a vanished "
		  "upstream saw %s after %llu ms, want a reset at ~%d ms",
		  KA_SPEC, io_end_name(e), (unsigned long long)(t_closed - t_last), KA_DEAD_MS);
	cr_assert_eq(extra, 0, "the client got %llu bytes from nowhere", (unsigned long long)extra);
	cr_log_info("vanished upstream: client closed (%s) %llu ms after the last exchange",
		    io_end_name(e), (unsigned long long)(t_closed - t_last));
	expect_found_in_time(t_sent, t_last, t_closed);
	expect_closed(sport, "upstream_reset", reset0, 1);
	alog_wait_client(cport, 2000, line, sizeof(line));
	cr_assert_not_null(strstr(line, " reason=upstream_reset "),
			   "access-log line of the "
			   "session whose upstream vanished: %s",
			   line);
	close(ck);
	assert_proxy_idle(&pk, 2000, "after keepalive closed the vanished upstream's session");

	/* Without keepalive: still open at 6 s, and working once the upstream is back. */
	p = (struct pollfd){ .fd = cn, .events = POLLIN };
	{
		int left = (int)(t_last + NO_KA_MS - now_ms());
		int r = poll(&p, 1, left > 0 ? left : 0);

		cr_assert_eq(r, 0,
			     "no keepalive: the client got an event (revents %#x) within %d "
			     "ms of a silent upstream",
			     p.revents, NO_KA_MS);
	}
	cr_assert_eq(proxy_sock_count(pn.port, un.port), 2,
		     "no keepalive: the proxy no longer "
		     "holds both sockets of the session at %d ms",
		     NO_KA_MS);
	vnet_peer_link(true);
	cr_assert(echo_roundtrip(cn, 0xd3, 64, 5000), "no keepalive: the session does not work "
						      "once the upstream is back");
	close(cn);
	assert_proxy_idle(&pn, 3000, "after the surviving session ended");
	cr_assert(proxy_stop(&pk));
	cr_assert(proxy_stop(&pn));
	backend_stop(&uk);
	backend_stop(&un);
}
