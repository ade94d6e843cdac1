/*
 * fakeqemu.c - the lab's stand-in for a guest's qemu process.
 *
 * Installed by `cloud install` as $VIGIL_LAB_DIR/bin/qemu-system-x86_64, so
 * that /proc/PID/comm is "qemu-system-x86" and /proc/PID/cmdline carries the
 * same arguments a libvirt-started qemu has (-name guest=instance-...,
 * debug-threads=on -uuid <server uuid> ...).  It runs no guest: it starts one
 * thread per vCPU (-smp N, default 1), named "CPU n/KVM" as qemu does with
 * debug-threads=on, and each burns about 1 % of a core (spin ~150 us, sleep
 * ~15 ms), so "its vCPU threads still get CPU time" is measurable.
 *
 * Options it understands (all others are accepted and ignored, as the lab
 * virt driver passes a realistic command line):
 *   -smp N[,...]     number of vCPU threads
 *   -daemonize       fork; the parent exits 0 once the child wrote -pidfile
 *   -pidfile PATH    write the (child's) pid there
 * SIGTERM/SIGINT: exit 0 (as qemu does on a "power off").  SIGSTOP/SIGCONT
 * pause it like a paused guest.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_now;

static void on_term(int sig) { (void)sig; stop_now = 1; }

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *vcpu(void *arg)
{
	char name[16];
	snprintf(name, sizeof name, "CPU %ld/KVM", (long)arg);
	pthread_setname_np(pthread_self(), name);
	volatile unsigned long x = 0;
	struct timespec nap = { 0, 15 * 1000 * 1000 };
	while (!stop_now) {
		double until = now_s() + 150e-6;
		while (now_s() < until)
			x++;
		nanosleep(&nap, NULL);
	}
	return NULL;
}

static int write_pidfile(const char *path)
{
	char tmp[4096], buf[32];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
	if (write(fd, buf, n) != n) {
		close(fd);
		return -1;
	}
	close(fd);
	return rename(tmp, path);
}

int main(int argc, char **argv)
{
	long smp = 1;
	int daemonize = 0;
	const char *pidfile = NULL;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-smp") && i + 1 < argc)
			smp = strtol(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "-daemonize"))
			daemonize = 1;
		else if (!strcmp(argv[i], "-pidfile") && i + 1 < argc)
			pidfile = argv[++i];
	}
	if (smp < 1)
		smp = 1;
	if (smp > 64)
		smp = 64;

	if (daemonize) {
		int pfd[2];
		if (pipe(pfd) < 0) {
			perror("qemu-system-x86_64: pipe");
			return 1;
		}
		pid_t pid = fork();
		if (pid < 0) {
			perror("qemu-system-x86_64: fork");
			return 1;
		}
		if (pid > 0) {
			/* parent: wait until the child is set up, then exit */
			char c = 1;
			close(pfd[1]);
			if (read(pfd[0], &c, 1) != 1 || c != 0) {
				fprintf(stderr, "qemu-system-x86_64: child failed to start\n");
				return 1;
			}
			return 0;
		}
		close(pfd[0]);
		setsid();
		char c = 0;
		if (pidfile && write_pidfile(pidfile) < 0) {
			fprintf(stderr, "qemu-system-x86_64: cannot write pidfile %s: %s\n",
				pidfile, strerror(errno));
			c = 1;
		}
		if (write(pfd[1], &c, 1) != 1 || c)
			_exit(1);
		close(pfd[1]);
		int devnull = open("/dev/null", O_RDWR);
		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
			dup2(devnull, 2);
			if (devnull > 2)
				close(devnull);
		}
		if (chdir("/") < 0)
			_exit(1);
	} else if (pidfile && write_pidfile(pidfile) < 0) {
		fprintf(stderr, "qemu-system-x86_64: cannot write pidfile %s: %s\n",
			pidfile, strerror(errno));
		return 1;
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);

	/* the vCPU threads never take the signals: main's pause() must wake */
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	pthread_t th[64];
	for (long i = 0; i < smp; i++)
		pthread_create(&th[i], NULL, vcpu, (void *)i);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	while (!stop_now)
		pause();
	for (long i = 0; i < smp; i++)
		pthread_join(th[i], NULL);
	if (pidfile)
		unlink(pidfile);
	return 0;
}
