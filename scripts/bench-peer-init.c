/* The tiny /init of scripts/bench-peer (and of the VM test of
 * `schedrig boot --initrd`): prints the guest clock once it runs, then
 * resets the machine (the command line's reboot=k), so every VMM measured
 * boots the same kernel to the same first user instruction and ends the
 * same way. Static; makes its own /dev/console if the archive has none.
 *
 * Then it prints the guest's kvm-clock when the kernel marked sched_clock
 * stable (its "sched_clock: Marking stable (...)->(RAW, ...)" line, a
 * late initcall just before init): nanoseconds since kvm-clock started,
 * early in the kernel's setup. CLOCK_BOOTTIME undercounts under
 * emulation (it advances by timer ticks until the kvm-clock clocksource
 * takes over, and ticks get lost), by a different amount under each VMM.
 *
 * With `bench_peer_dmesg=1` on the kernel command line (the kernel hands
 * it to init as an environment variable) it first copies the kernel log
 * to the console: a quiet boot (loglevel=6) with its whole log shown
 * afterwards, e.g. with initcall_debug, to see where boot time goes
 * without paying for a verbose console during the boot. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

static int open_kmsg(void)
{
	mkdir("/dev", 0755);
	mknod("/dev/kmsg", S_IFCHR | 0600, makedev(1, 11));
	return open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
}

/* Each read of /dev/kmsg returns one record "prio,seq,usec,flags;text\n".
 * With `all`, every record goes to `out`; else only the kvm-clock line. */
static void scan_kmsg(int out, int all)
{
	static const char stable[] = "sched_clock: Marking stable (";
	char rec[2048], line[96];
	long long gtod, gtod_off, raw;
	ssize_t n;
	char *p;
	int fd = open_kmsg(), len;

	if (fd < 0) {
		perror("bench-peer-init: /dev/kmsg");
		return;
	}
	for (;;) {
		n = read(fd, rec, sizeof rec - 1);
		if (n < 0 && errno == EPIPE)
			continue; /* records overwritten: go on from the oldest kept */
		if (n <= 0)
			break;
		rec[n] = 0;
		if (all && (write(out, "kmsg: ", 6) != 6 || write(out, rec, n) != n))
			break;
		p = strstr(rec, stable);
		if (!all && p && sscanf(p + sizeof stable - 1, "%lld, %lld)->(%lld", &gtod, &gtod_off, &raw) == 3) {
			len = snprintf(line, sizeof line,
				       "bench-peer-init: kvm-clock at sched_clock stable %lld.%06lld s\n",
				       raw / 1000000000, raw % 1000000000 / 1000);
			if (write(out, line, len) != len)
				perror("bench-peer-init: kvm-clock line");
			break;
		}
	}
	close(fd);
}

int main(void)
{
	struct timespec boot;
	char line[96];
	int n, fd = 1;

	if (clock_gettime(CLOCK_BOOTTIME, &boot) != 0)
		boot.tv_sec = -1, boot.tv_nsec = 0;
	n = snprintf(line, sizeof line, "bench-peer-init: guest clock %ld.%06ld s\n",
		     (long)boot.tv_sec, boot.tv_nsec / 1000);
	/* The kernel gives init /dev/console as stdout when the archive has
	 * one; otherwise make it (errors here show as the write's). */
	if (write(fd, line, n) != n) {
		mkdir("/dev", 0755);
		mknod("/dev/console", S_IFCHR | 0600, makedev(5, 1));
		fd = open("/dev/console", O_WRONLY);
		if (fd < 0 || write(fd, line, n) != n)
			perror("bench-peer-init: /dev/console");
	}
	if (fd >= 0) {
		scan_kmsg(fd, 0);
		if (getenv("bench_peer_dmesg"))
			scan_kmsg(fd, 1);
	}
	reboot(RB_AUTOBOOT);
	perror("bench-peer-init: reboot");
	return 1;
}
