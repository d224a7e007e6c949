#!/bin/busybox sh
# /init of the lab's initramfs (dom0 and guest share the image).
# dom0: load Xen's drivers, start xenstored, xen-init-dom0, xenconsoled, then serve
#       commands on the agent serial port (ncdlab.agent=DEV on the kernel command line).
# guest: load the drivers, then serve commands over xenstore (data/lab/...).
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /var/log /var/lib /usr/sbin
/bin/busybox --install -s
export PATH=/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null || mount -t tmpfs dev /dev
mkdir -p /dev/pts /dev/shm /root
mount -t devpts devpts /dev/pts
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
ln -sfn /run /var/run
mkdir -p /run/lock && ln -sfn /run/lock /var/lock
hostname lab
ip link set lo up
t() { echo "@@ T+$(cut -d' ' -f1 /proc/uptime)s $*"; }

modprobe xenfs && mount -t xenfs xenfs /proc/xen
CAP=$(cat /proc/xen/capabilities 2>/dev/null)
ROLE=guest; [ "$CAP" = control_d ] && ROLE=dom0
t "ROLE=$ROLE"
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd tun; do
    modprobe $m || echo "@@ modprobe $m FAILED"
done

AGENT=
for arg in $(cat /proc/cmdline); do
    case $arg in ncdlab.agent=*) AGENT=${arg#ncdlab.agent=} ;; esac
done

if [ $ROLE = dom0 ]; then
    mkdir -p /run/xen /run/xenstored /var/lib/xen/dump /var/lib/xenstored \
        /var/log/xen/console
    export XENSTORED_ROOTDIR=/run/xenstored
    xenstored --pid-file /run/xenstored.pid
    i=0
    while ! xenstore-read -s / >/dev/null 2>&1 && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
    t "xenstored up after ${i}s"
    xen-init-dom0 || echo "@@ xen-init-dom0 FAILED"
    xenconsoled --pid-file /run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console \
        || echo "@@ xenconsoled FAILED"
    t "DOM0-READY agent=${AGENT:-none}"
    [ -n "$AGENT" ] && exec python3 /lab/agent.py serve-serial "$AGENT"
    exec setsid cttyhack sh
else
    modprobe xen-netfront || echo "@@ modprobe xen-netfront FAILED"
    t "GUEST-READY"
    exec python3 /lab/agent.py serve-xenstore
fi
