/* seccomp_launch: runs a program with io_uring blocked the way a container runtime's default
 * seccomp profile blocks it (Docker >= 25, moby PR 46762; containerd PR 9320): a filter that
 * allows everything except io_uring_setup, io_uring_enter and io_uring_register, which fail
 * with EPERM (or ENOSYS, a kernel without io_uring). Test tool only: it never grants anything. */
#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define EXIT_USAGE 2
#define EXIT_EXEC  127 /* as a shell does when the command cannot be run */

static const char *const blocked[] = {"io_uring_setup", "io_uring_enter", "io_uring_register"};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: seccomp_launch [--errno EPERM|ENOSYS] -- PROG [ARGS...]\n"
		"  runs PROG with no_new_privs and a seccomp filter under which io_uring_setup,\n"
		"  io_uring_enter and io_uring_register fail with the errno (default EPERM, as\n"
		"  Docker's default profile); every other system call is allowed.\n"
		"  exit status: PROG's, 2 for a usage error or a filter that cannot be loaded,\n"
		"  127 when PROG cannot be executed.\n");
}

/* Builds and loads the filter; returns 0 or a negative errno, with what failed in why. */
static int block_io_uring(int err, const char **why)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
	int rc = 0;

	if (ctx == NULL) {
		*why = "seccomp_init";
		return -ENOMEM;
	}
	/* seccomp_load sets no_new_privs itself by default; say so explicitly, the way a
	 * container runtime does, so that this does not depend on libseccomp's default. */
	rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1);
	if (rc < 0) {
		*why = "seccomp_attr_set(SCMP_FLTATR_CTL_NNP)";
		goto out;
	}
	for (size_t i = 0; i < sizeof(blocked) / sizeof(blocked[0]); i++) {
		int nr = seccomp_syscall_resolve_name(blocked[i]);

		if (nr == __NR_SCMP_ERROR) {
			/* libseccomp older than 2.5 does not know the io_uring calls */
			*why = blocked[i];
			rc = -ENOSYS;
			goto out;
		}
		rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO((unsigned int)err), nr, 0);
		if (rc < 0) {
			*why = blocked[i];
			goto out;
		}
	}
	rc = seccomp_load(ctx);
	if (rc < 0)
		*why = "seccomp_load";
out:
	seccomp_release(ctx);
	return rc;
}

int main(int argc, char **argv)
{
	const char *why = "";
	int err = EPERM, i = 1, rc;

	for (; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		}
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(argv[i], "--errno") == 0 && i + 1 < argc) {
			const char *v = argv[++i];

			if (strcmp(v, "EPERM") == 0) {
				err = EPERM;
			} else if (strcmp(v, "ENOSYS") == 0) {
				err = ENOSYS;
			} else {
				fprintf(stderr,
					"seccomp_launch: --errno '%s': expected EPERM or "
					"ENOSYS\n",
					v);
				return EXIT_USAGE;
			}
			continue;
		}
		fprintf(stderr, "seccomp_launch: unexpected argument '%s'\n", argv[i]);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (i >= argc) {
		fprintf(stderr, "seccomp_launch: no program given after --\n");
		usage(stderr);
		return EXIT_USAGE;
	}
	/* no_new_privs first: a seccomp filter may only be loaded by an unprivileged process
	 * with it set, and it is what a container's processes run with. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		fprintf(stderr, "seccomp_launch: prctl(PR_SET_NO_NEW_PRIVS): %s\n",
			strerror(errno));
		return EXIT_USAGE;
	}
	rc = block_io_uring(err, &why);
	if (rc < 0) {
		fprintf(stderr, "seccomp_launch: cannot install the io_uring filter (%s): %s\n",
			why, strerror(-rc));
		return EXIT_USAGE;
	}
	execvp(argv[i], &argv[i]);
	fprintf(stderr, "seccomp_launch: cannot execute '%s': %s\n", argv[i], strerror(errno));
	return EXIT_EXEC;
}
