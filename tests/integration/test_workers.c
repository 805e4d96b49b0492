/* --workers: several threads, each with its own ring and SO_REUSEPORT
 * listener, must keep every contract of one worker together: integrity
 * under concurrency, fds back to baseline, exit 0 within 1 s on SIGTERM;
 * "auto" starts one worker per CPU. */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

Test(workers, concurrent_200_with_4_workers, .timeout = 60) /* serial */
{
	static const char *const extra[] = { "--workers", "4", NULL };
	struct backend b;
	struct proxy px;
	struct multi_stats st;
	int threads;

	setup_echo(&b, &px, extra);
	threads = thread_count(px.proc.pid);
	cr_assert_geq(threads, 4, "--workers 4 runs %d threads", threads);
	multi_echo(&st, 200, AF_INET, px.port, 256 * KIB, 1 * KIB, 0x3000, 45000);
	cr_assert_eq(st.ok, 200, "%d of 200 sessions intact (connect failed %d, corrupt %d, "
		     "early EOF %d, reset %d, timeout %d); %s", st.ok, st.connect_failed,
		     st.corrupt, st.short_eof, st.reset, st.timeout, st.first_problem);
	assert_proxy_idle(&px, 2000, "after 200 sessions on 4 workers");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(workers, sequential_2000_with_2_workers, .timeout = 60) /* serial */
{
	static const char *const extra[] = { "--workers", "2", NULL };
	struct backend b;
	struct proxy px;

	setup_echo(&b, &px, extra);
	for (int i = 0; i < 2000; i++) {
		int fd = tcp_connect(AF_INET, px.port, 3000);

		cr_assert_geq(fd, 0, "connection %d: connect: %s", i, strerror(errno));
		cr_assert(echo_roundtrip(fd, 0x2000 + (uint64_t)i, 100, 3000),
			  "connection %d: echo failed", i);
		close(fd);
	}
	assert_proxy_idle(&px, 1000, "after 2000 connections on 2 workers");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(workers, sigterm_with_clients_4_workers, .timeout = 30)
{
	static const char *const extra[] = { "--workers", "4", "--drain-timeout", "0", NULL };
	struct backend b;
	struct proxy px;
	int fds[20];
	uint64_t t0, ms;
	char st[64];

	setup_echo(&b, &px, extra);
	for (int i = 0; i < 20; i++) {
		fds[i] = tcp_connect(AF_INET, px.port, 2000);
		cr_assert_geq(fds[i], 0, "client %d: connect: %s", i, strerror(errno));
		cr_assert(echo_roundtrip(fds[i], 0x4040 + (uint64_t)i, 1024, 3000),
			  "client %d: echo failed", i);
	}
	t0 = now_ms();
	kill(px.proc.pid, SIGTERM);
	cr_assert(proc_wait(&px.proc, 3000), "still running 3 s after SIGTERM");
	ms = now_ms() - t0;
	cr_assert(WIFEXITED(px.proc.status) && WEXITSTATUS(px.proc.status) == 0,
		  "after SIGTERM the proxy %s, want exit 0", status_str(&px.proc, st, sizeof(st)));
	cr_assert_leq(ms, 1000, "exit took %llu ms after SIGTERM, want ≤ 1000 ms",
		      (unsigned long long)ms);
	for (int i = 0; i < 20; i++) {
		enum io_end e = io_wait_close(fds[i], 1000, NULL);

		cr_assert(e == IO_EOF || e == IO_RESET, "client %d: %s after the proxy exited", i,
			  io_end_name(e));
		close(fds[i]);
	}
	backend_stop(&b);
}

Test(workers, auto_one_per_cpu, .timeout = 30)
{
	static const char *const extra[] = { "--workers", "auto", NULL };
	struct backend b;
	struct proxy px;
	cpu_set_t set;
	int cpus, threads, fd;

	CPU_ZERO(&set);
	cr_assert_eq(sched_getaffinity(0, sizeof(set), &set), 0);
	cpus = CPU_COUNT(&set);
	setup_echo(&b, &px, extra);
	threads = thread_count(px.proc.pid);
	cr_assert_geq(threads, cpus < 64 ? cpus : 64, "--workers auto on %d CPUs runs %d threads",
		      cpus, threads);
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect: %s", strerror(errno));
	cr_assert(echo_roundtrip(fd, 0xa070, 64 * KIB, 5000), "echo failed");
	close(fd);
	assert_proxy_idle(&px, 1000, "after the echo");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}
