/* Real third-party peers for the integration tests: locating nginx/HAProxy,
 * starting nginx as a backend from a generated config in a private temp dir,
 * and cleaning up after them. Never signals a process it did not spawn, and
 * never removes anything outside /tmp/uproxy-*. */
#include "peers.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *find_prog(const char *name)
{
	static char buf[4][128];
	static int k;
	const char *dirs[] = { "/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin" };
	char *b = buf[k++ % 4];

	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		snprintf(b, sizeof(buf[0]), "%s/%s", dirs[i], name);
		if (access(b, X_OK) == 0)
			return b;
	}
	cr_assert_fail("%s is not installed (run scripts/setup.sh --bench); this test needs it",
		       name);
	return NULL;
}

void make_temp_dir(char *tmpl)
{
	cr_assert_not_null(mkdtemp(tmpl), "mkdtemp %s: %s", tmpl, strerror(errno));
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

void remove_tree(const char *dir)
{
	if (dir && strncmp(dir, "/tmp/uproxy-", 12) == 0 && strstr(dir, "..") == NULL)
		nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f, "cannot write %s: %s", path, strerror(errno));
	fputs(text, f);
	cr_assert_eq(fclose(f), 0, "cannot write %s: %s", path, strerror(errno));
}

bool wait_listening(struct proc *p, uint16_t port, int timeout_ms)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	char want[32], line[512];

	snprintf(want, sizeof(want), "0100007F:%04X", port);
	do {
		FILE *f = fopen("/proc/net/tcp", "r");
		bool found = false;

		if (f) {
			while (!found && fgets(line, sizeof(line), f)) {
				char local[64], remote[64];
				unsigned int st;

				if (sscanf(line, "%*d: %63s %63s %x", local, remote, &st) == 3 &&
				    st == 0x0A && strcmp(local, want) == 0)
					found = true;
			}
			fclose(f);
		}
		if (found)
			return true;
		if (proc_wait(p, 0))
			return false;
		sleep_ms(20);
	} while (now_ms() < deadline);
	return false;
}

void stop_peer(struct proc *p, const char *name)
{
	if (!p->reaped) {
		kill(p->pid, SIGTERM);
		if (!proc_wait(p, 3000)) {
			cr_log_warn("%s did not exit within 3 s of SIGTERM; killing it", name);
			proc_kill(p);
		}
	}
	proc_release(p);
}

void nginx_start(struct proc *p, const struct nginx_cfg *cfg)
{
	const char *nginx = find_prog("nginx"), *d = cfg->dir;
	char conf[256], elog[256], text[4096];
	int wc = cfg->worker_connections ? cfg->worker_connections : 64;
	int n;

	snprintf(conf, sizeof(conf), "%s/nginx.conf", d);
	snprintf(elog, sizeof(elog), "%s/error.log", d);
	n = snprintf(text, sizeof(text),
		     "daemon off;\nmaster_process off;\nworker_processes 1;\n"
		     "pid %s/nginx.pid;\nerror_log %s/error.log info;\n"
		     "events { worker_connections %d; }\n"
		     "http {\n  access_log off;\n"
		     "  client_body_temp_path %s/body;\n  proxy_temp_path %s/proxy;\n"
		     "  fastcgi_temp_path %s/fastcgi;\n  uwsgi_temp_path %s/uwsgi;\n"
		     "  scgi_temp_path %s/scgi;\n"
		     "  server {\n    listen 127.0.0.1:%u %s;\n    %s\n  }\n}\n",
		     d, d, wc, d, d, d, d, d, cfg->port,
		     cfg->listen_opts ? cfg->listen_opts : "", cfg->server_body);
	cr_assert_lt(n, (int)sizeof(text), "nginx config too long");
	write_file(conf, text);
	char *argv[] = { (char *)nginx, "-e", elog, "-p", (char *)d, "-c", conf, NULL };

	cr_assert_eq(proc_spawn(p, argv, cfg->nofile, cfg->nofile), 0, "cannot spawn nginx");
	if (!wait_listening(p, cfg->port, 5000)) {
		char st[64], *err = proc_stderr(p);

		cr_assert_fail("nginx not listening on 127.0.0.1:%u within 5 s (%s); stderr:\n%s",
			       cfg->port, status_str(p, st, sizeof(st)), err);
	}
}
