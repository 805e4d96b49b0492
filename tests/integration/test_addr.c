/* Address families and names: [::1] listener with an IPv4 upstream and the
 * reverse, ":PORT" reachable over both 127.0.0.1 and ::1, and localhost as
 * the upstream or listen host. IPv6 tests skip when ::1 is not configured. */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void need_ipv6(void)
{
	if (!have_ipv6())
		cr_skip_test("::1 is not available on this machine");
}

static void echo_via(const struct proxy *px, int family, uint64_t seed)
{
	const char *name = family == AF_INET6 ? "::1" : "127.0.0.1";
	int fd = tcp_connect(family, px->port, 2000);

	cr_assert_geq(fd, 0, "connect to %s port %u: %s", name, px->port, strerror(errno));
	cr_assert(echo_roundtrip(fd, seed, 64 * KIB, 5000), "64 KiB echo via %s failed", name);
	close(fd);
}

static void run(const char *listen_host, int probe_family, int up_family, const char *up_host,
		const int *families, size_t nfam)
{
	struct backend b;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	char listen[64], upstream[64];

	backend_bind(&b, up_family);
	cfg.port = free_port();
	snprintf(listen, sizeof(listen), "%s:%u", listen_host, cfg.port);
	snprintf(upstream, sizeof(upstream), "%s:%u", up_host, b.port);
	cfg.listen = listen;
	cfg.upstream = upstream;
	cfg.up_port = b.port;
	cfg.probe_family = probe_family;
	proxy_start(&px, &cfg);
	backend_run(&b, BK_ECHO);
	for (size_t i = 0; i < nfam; i++)
		echo_via(&px, families[i], 0xadd0 + i);
	assert_proxy_idle(&px, 1000, "after the echoes");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(addr, listen_ipv6_upstream_ipv4, .timeout = 20)
{
	static const int fam[] = { AF_INET6 };

	need_ipv6();
	run("[::1]", AF_INET6, AF_INET, "127.0.0.1", fam, 1);
}

Test(addr, listen_ipv4_upstream_ipv6, .timeout = 20)
{
	static const int fam[] = { AF_INET };

	need_ipv6();
	run("127.0.0.1", AF_INET, AF_INET6, "[::1]", fam, 1);
}

Test(addr, listen_any_both_families, .timeout = 20)
{
	static const int fam[] = { AF_INET, AF_INET6, AF_INET };

	need_ipv6();
	run("", AF_INET, AF_INET, "127.0.0.1", fam, 3);
}

Test(addr, upstream_hostname, .timeout = 20)
{
	static const int fam[] = { AF_INET };

	/* /etc/hosts maps localhost to 127.0.0.1 (and maybe ::1, tried in order) */
	run("127.0.0.1", AF_INET, AF_INET, "localhost", fam, 1);
}

Test(addr, listen_hostname, .timeout = 20)
{
	static const int fam[] = { AF_INET };

	run("localhost", AF_INET, AF_INET, "127.0.0.1", fam, 1);
}
