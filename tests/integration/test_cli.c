/* The command line contract: every usage error exits 2 and every run-time
 * failure exits 1, within 2 s, with a message on stderr naming the problem;
 * --help and --version exit 0 on stdout; valid and short options start. */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })
#define WORDS(...) ((const char *const[]){ __VA_ARGS__, NULL })

#define USAGE 2
#define RUNTIME 1

/* a listen and an upstream address on ports that were free */
static char L[32], U[32];

static void init_addrs(void)
{
	snprintf(L, sizeof(L), "127.0.0.1:%u", free_port());
	snprintf(U, sizeof(U), "127.0.0.1:%u", free_port());
}

TestSuite(cli, .init = init_addrs, .timeout = 15);

static bool has_word(const char *s, const char *const words[])
{
	for (size_t i = 0; words[i]; i++)
		if (strcasestr(s, words[i]))
			return true;
	return false;
}

static bool blank(const char *s)
{
	while (*s && isspace((unsigned char)*s))
		s++;
	return !*s;
}

static void join(char *buf, size_t len, const char *const v[])
{
	size_t off = 0;

	buf[0] = '\0';
	for (size_t i = 0; v[i] && off < len; i++)
		off += (size_t)snprintf(buf + off, len - off, "%s'%s'", i ? " " : "", v[i]);
}

static void expect_error(int want, const char *const args[], const char *const words[])
{
	struct run_result r;
	char cmd[512], w[256];

	join(cmd, sizeof(cmd), args);
	join(w, sizeof(w), words);
	run_uproxy(&r, 2000, args);
	cr_assert(r.exited, "uproxy %s still running after 2 s (want exit %d); stderr:\n%s", cmd,
		  want, r.err);
	cr_assert_eq(r.code, want, "uproxy %s exited %d, want %d; stderr:\n%s", cmd, r.code, want,
		     r.err);
	cr_assert(!blank(r.err), "uproxy %s exited %d with nothing on stderr", cmd, r.code);
	cr_assert(has_word(r.err, words), "uproxy %s: stderr names none of %s:\n%s", cmd, w, r.err);
	run_result_free(&r);
}

/* ---- usage errors: exit 2 -------------------------------------------------- */

Test(cli, no_arguments)
{
	expect_error(USAGE, ARGS("--log-level", "info"), WORDS("listen", "upstream", "usage"));
}

Test(cli, unknown_option)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--bogus-option"),
		     WORDS("bogus-option"));
}

Test(cli, missing_upstream)
{
	expect_error(USAGE, ARGS("--listen", L), WORDS("upstream"));
}

Test(cli, missing_listen)
{
	expect_error(USAGE, ARGS("--upstream", U), WORDS("listen"));
}

Test(cli, missing_option_value)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream"), WORDS("upstream"));
}

Test(cli, listen_without_port)
{
	expect_error(USAGE, ARGS("--listen", "127.0.0.1", "--upstream", U), WORDS("127.0.0.1"));
}

Test(cli, upstream_without_port)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", "127.0.0.1"), WORDS("127.0.0.1"));
}

Test(cli, listen_unclosed_bracket)
{
	expect_error(USAGE, ARGS("--listen", "[::1", "--upstream", U), WORDS("[::1"));
}

Test(cli, listen_bracket_without_port)
{
	expect_error(USAGE, ARGS("--listen", "[::1]", "--upstream", U), WORDS("[::1]"));
}

Test(cli, upstream_port_not_numeric)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", "host:abc"), WORDS("abc"));
}

Test(cli, listen_port_not_numeric)
{
	expect_error(USAGE, ARGS("--listen", "127.0.0.1:80x", "--upstream", U), WORDS("80x"));
}

Test(cli, listen_port_negative)
{
	expect_error(USAGE, ARGS("--listen", "127.0.0.1:-1", "--upstream", U),
		     WORDS("127.0.0.1:-1", "-1"));
}

Test(cli, listen_port_zero)
{
	expect_error(USAGE, ARGS("--listen", "127.0.0.1:0", "--upstream", U),
		     WORDS("127.0.0.1:0", "port"));
}

Test(cli, upstream_port_zero)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", "127.0.0.1:0"),
		     WORDS("127.0.0.1:0", "port"));
}

Test(cli, listen_port_65536)
{
	expect_error(USAGE, ARGS("--listen", "127.0.0.1:65536", "--upstream", U), WORDS("65536"));
}

Test(cli, upstream_port_65536)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", "127.0.0.1:65536"), WORDS("65536"));
}

Test(cli, bad_log_level)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--log-level", "verbose"),
		     WORDS("verbose"));
}

Test(cli, buffer_size_not_a_number)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--buffer-size", "lots"),
		     WORDS("lots"));
}

Test(cli, buffer_size_trailing_garbage)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--buffer-size", "16k"),
		     WORDS("16k"));
}

Test(cli, buffer_size_too_small)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--buffer-size", "512"),
		     WORDS("512", "buffer-size"));
}

Test(cli, buffer_size_too_large)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--buffer-size", "2097152"),
		     WORDS("2097152", "buffer-size"));
}

Test(cli, buffer_size_overflow)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--buffer-size",
				 "99999999999999999999999"),
		     WORDS("99999999999999999999999", "buffer-size"));
}

Test(cli, buffers_not_power_of_two)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--buffers", "100"),
		     WORDS("100", "buffers"));
}

Test(cli, buffers_too_few)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--buffers", "32"),
		     WORDS("32", "buffers"));
}

Test(cli, buffers_too_many)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--buffers", "65536"),
		     WORDS("65536", "buffers"));
}

Test(cli, max_conns_negative)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--max-conns", "-5"),
		     WORDS("-5", "max-conns"));
}

Test(cli, max_conns_not_a_number)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--max-conns", "12x"),
		     WORDS("12x"));
}

Test(cli, workers_zero)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--workers", "0"),
		     WORDS("workers"));
}

Test(cli, workers_too_many)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--workers", "65"),
		     WORDS("65", "workers"));
}

Test(cli, workers_not_a_number)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--workers", "many"),
		     WORDS("many"));
}

Test(cli, balance_unknown)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--balance", "fastest"),
		     WORDS("fastest"));
}

Test(cli, retries_too_many)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--retries", "17"),
		     WORDS("17", "retries"));
}

Test(cli, upstream_weight_zero)
{
	char u[64];

	snprintf(u, sizeof(u), "%s,weight=0", U);
	expect_error(USAGE, ARGS("--listen", L, "--upstream", u), WORDS("weight"));
}

Test(cli, upstream_weight_too_big)
{
	char u[64];

	snprintf(u, sizeof(u), "%s,weight=257", U);
	expect_error(USAGE, ARGS("--listen", L, "--upstream", u), WORDS("257", "weight"));
}

Test(cli, upstream_unknown_parameter)
{
	char u[64];

	snprintf(u, sizeof(u), "%s,colour=blue", U);
	expect_error(USAGE, ARGS("--listen", L, "--upstream", u), WORDS("colour"));
}

Test(cli, connect_timeout_not_a_number)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--connect-timeout", "soon"),
		     WORDS("soon"));
}

Test(cli, idle_timeout_trailing_garbage)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--idle-timeout", "10s"),
		     WORDS("10s"));
}

Test(cli, fin_timeout_negative)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--fin-timeout", "-1"),
		     WORDS("-1", "fin-timeout"));
}

Test(cli, drain_timeout_not_a_number)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--drain-timeout", "never"),
		     WORDS("never"));
}

Test(cli, fail_threshold_not_a_number)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--fail-threshold", "x3"),
		     WORDS("x3"));
}

Test(cli, health_interval_negative)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--health-interval", "-100"),
		     WORDS("-100", "health-interval"));
}

Test(cli, resolve_interval_not_a_number)
{
	expect_error(USAGE, ARGS("--listen", L, "--upstream", U, "--resolve-interval", "hourly"),
		     WORDS("hourly"));
}

/* ---- run-time failures: exit 1 --------------------------------------------- */

Test(cli, upstream_unresolvable)
{
	expect_error(RUNTIME, ARGS("--listen", L, "--upstream", "no-such-host.invalid:80"),
		     WORDS("no-such-host.invalid"));
}

Test(cli, listen_unresolvable)
{
	char a[64];

	snprintf(a, sizeof(a), "no-such-host.invalid:%u", free_port());
	expect_error(RUNTIME, ARGS("--listen", a, "--upstream", U), WORDS("no-such-host.invalid"));
}

Test(cli, listen_address_in_use)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	char addr[32], port[8];
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(fd, 16), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	snprintf(port, sizeof(port), "%u", ntohs(a.sin_port));
	snprintf(addr, sizeof(addr), "127.0.0.1:%s", port);
	expect_error(RUNTIME, ARGS("--listen", addr, "--upstream", U), WORDS(port, "in use"));
	close(fd);
}

Test(cli, listen_address_not_local)
{
	char a[64];

	/* TEST-NET-1: binding fails with EADDRNOTAVAIL; no packet is sent */
	snprintf(a, sizeof(a), "192.0.2.1:%u", free_port());
	expect_error(RUNTIME, ARGS("--listen", a, "--upstream", U), WORDS("192.0.2.1"));
}

/* ---- help, version and valid command lines -------------------------------- */

static void expect_help(const char *opt)
{
	static const char *const names[] = { "--listen", "--upstream", "--log-level",
					     "--buffer-size", "--buffers", "--max-conns",
					     "--workers", "--config", "--balance",
					     "--connect-timeout", "--retries", "--fail-threshold",
					     "--fail-timeout", "--health-interval",
					     "--resolve-interval", "--idle-timeout", "--fin-timeout",
					     "--drain-timeout", "--help", "--version", NULL };
	struct run_result r;

	run_uproxy(&r, 2000, ARGS(opt));
	cr_assert(r.exited, "uproxy %s still running after 2 s", opt);
	cr_assert_eq(r.code, 0, "uproxy %s exited %d, want 0; stderr:\n%s", opt, r.code, r.err);
	cr_assert(!blank(r.out), "uproxy %s printed nothing on stdout", opt);
	for (size_t i = 0; names[i]; i++)
		cr_assert(strstr(r.out, names[i]), "uproxy %s does not mention %s:\n%s", opt,
			  names[i], r.out);
	run_result_free(&r);
}

static void expect_version(const char *opt)
{
	struct run_result r;

	run_uproxy(&r, 2000, ARGS(opt));
	cr_assert(r.exited, "uproxy %s still running after 2 s", opt);
	cr_assert_eq(r.code, 0, "uproxy %s exited %d, want 0; stderr:\n%s", opt, r.code, r.err);
	cr_assert(strstr(r.out, UPROXY_VERSION), "uproxy %s: stdout does not contain the version "
		  "%s:\n%s", opt, UPROXY_VERSION, r.out);
	run_result_free(&r);
}

Test(cli, help_long)
{
	expect_help("--help");
}

Test(cli, help_short)
{
	expect_help("-h");
}

Test(cli, version_long)
{
	expect_version("--version");
}

Test(cli, version_short)
{
	expect_version("-V");
}

Test(cli, valid_options_accepted)
{
	static const char *const extra[] = { "--log-level", "debug", "--buffer-size", "1024",
					     "--buffers", "64", "--max-conns", "10", NULL };
	struct backend b;
	struct proxy px;
	int fd;

	setup_echo(&b, &px, extra);
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0);
	cr_assert(echo_roundtrip(fd, 0xcafe, 8192, 3000), "echo failed with the smallest buffers");
	close(fd);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(cli, short_options_accepted)
{
	uint16_t port = free_port();
	char l[32];
	char *argv[] = { (char *)uproxy_bin(), "-l", l, "-u", U, "--log-level", "error", NULL };
	struct proc p;
	bool ready = false;
	char st[64];

	snprintf(l, sizeof(l), "127.0.0.1:%u", port);
	cr_assert_eq(proc_spawn(&p, argv, 0, 0), 0);
	for (int i = 0; i < 100 && !ready && !proc_wait(&p, 0); i++) {
		int fd = tcp_connect(AF_INET, port, 20);

		ready = fd >= 0;
		if (fd >= 0)
			close(fd);
		else
			sleep_ms(20);
	}
	if (!ready) {
		char *err = proc_stderr(&p);

		proc_kill(&p);
		cr_assert_fail("uproxy -l %s -u %s not listening within 2 s (%s); stderr:\n%s", l, U,
			       status_str(&p, st, sizeof(st)), err);
	}
	kill(p.pid, SIGTERM);
	cr_assert(proc_wait(&p, 2000), "no exit within 2 s of SIGTERM");
	cr_assert(WIFEXITED(p.status) && WEXITSTATUS(p.status) == 0, "exit: %s",
		  status_str(&p, st, sizeof(st)));
	proc_release(&p);
}

Test(cli, log_level_error_is_quiet)
{
	static const char *const extra[] = { "--log-level", "error", NULL };
	struct backend b;
	struct proxy px;
	char *err;
	int fd;

	setup_echo(&b, &px, extra);
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0);
	cr_assert(echo_roundtrip(fd, 0xe77, 4096, 3000), "echo failed");
	close(fd);
	assert_proxy_idle(&px, 1000, "after the session");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	err = proc_stderr(&px.proc);
	cr_assert(blank(err), "with --log-level error a clean run logged:\n%s", err);
	free(err);
	backend_stop(&b);
}
