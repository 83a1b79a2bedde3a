//! The VPGs of this agent: the registry file, opening each VPG at start-up (recovery of
//! its journal and dirty maps), creating, pausing and deleting VPGs.

use super::*;

/// The VPGs of this agent.
pub struct Vpgs {
    state_dir: PathBuf,
    volumes: Arc<Volumes>,
    engine: Arc<Engine>,
    pool: Arc<BufPool>,
    cfg: CaptureConfig,
    vpgs: RwLock<BTreeMap<String, Arc<Vpg>>>,
    /// VPGs in the registry that could not be opened, with the reason: kept in the
    /// registry, their volumes fenced (no write may go uncaptured).
    failed: RwLock<BTreeMap<String, (VpgRecord, String)>>,
    change: tokio::sync::Mutex<()>,
    /// The registry file could not be read: every volume is fenced and VPG changes are
    /// refused, with this reason.
    frozen: Option<String>,
    /// Woken when a link may have work: records settled in any VPG, a VPG created,
    /// deleted, paused or resumed (see [`VpgCapture::wake_shipper`]).
    ship_wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Vpgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vpgs").finish()
    }
}

fn registry_path(state_dir: &Path) -> PathBuf {
    state_dir.join("vpgs.json")
}

fn check_vpg_name(name: &str) -> Result<(), AgentError> {
    crate::meta::name_problem("VPG", name).map_or(Ok(()), |why| Err(AgentError::Refused(why)))
}

impl Vpgs {
    /// Opens every registered VPG, recovering its journal and maps, and attaches its
    /// volumes.
    pub fn load(
        state_dir: &Path,
        volumes: Arc<Volumes>,
        engine: Arc<Engine>,
        pool: Arc<BufPool>,
        cfg: CaptureConfig,
    ) -> Result<Arc<Vpgs>, AgentError> {
        let path = registry_path(state_dir);
        let read = crate::meta::fetch_noting::<VpgRegistry>(&path, crate::meta::VPGS).and_then(|reg| match reg {
            Some(reg) if reg.version != VPG_FORMAT_VERSION => Err(AgentError::StateCorrupt {
                path: path.clone(),
                why: format!("format version {} is not {VPG_FORMAT_VERSION}", reg.version),
            }),
            r => Ok(r.unwrap_or(VpgRegistry {
                version: VPG_FORMAT_VERSION,
                vpgs: vec![],
            })),
        });
        let (reg, frozen) = match read {
            Ok(reg) => (reg, None),
            Err(e @ AgentError::StateCorrupt { .. }) => {
                // Which volumes are protected is not known: none may take a write that no
                // journal captures.
                let why = format!(
                    "{e}. Every volume is served read-only and VPG changes are refused until it is fixed (then restart the agent)"
                );
                crate::meta::note_problem(why.clone());
                for v in volumes.list_online() {
                    v.fence(why.clone());
                }
                (
                    VpgRegistry {
                        version: VPG_FORMAT_VERSION,
                        vpgs: vec![],
                    },
                    Some(why),
                )
            }
            Err(e) => return Err(e),
        };
        let me = Arc::new(Vpgs {
            state_dir: state_dir.into(),
            volumes,
            engine,
            pool,
            cfg,
            vpgs: RwLock::new(BTreeMap::new()),
            failed: RwLock::new(BTreeMap::new()),
            change: tokio::sync::Mutex::new(()),
            frozen,
            ship_wake: Arc::new(tokio::sync::Notify::new()),
        });
        let mut given = false;
        let mut records = reg.vpgs;
        for r in records.iter_mut().filter(|r| !r.lineage.is_known()) {
            r.lineage = Lineage::new()?;
            info!(vpg = %r.name, lineage = %r.lineage, "VPG made before lineages: lineage id given");
            given = true;
        }
        if given {
            me.save(&records)?;
        }
        for record in records {
            let name = record.name.clone();
            match me.open(record.clone()) {
                Ok(v) => {
                    me.hold_until_confirmed(&v);
                    me.vpgs.write().unwrap_or_else(|e| e.into_inner()).insert(name, v);
                }
                Err(e) => {
                    let why = format!(
                        "VPG {name:?} cannot be opened: {e}. Its volumes ({}) are served read-only, so that no write goes uncaptured; fix what is named and restart the agent",
                        record.volumes.join(", ")
                    );
                    crate::meta::note_problem(why.clone());
                    for v in &record.volumes {
                        if let Some(vol) = me.volumes.get(v) {
                            vol.fence(why.clone());
                        }
                    }
                    me.failed
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name, (record, why));
                }
            }
        }
        Ok(me)
    }

    fn check_frozen(&self) -> Result<(), AgentError> {
        match &self.frozen {
            Some(why) => Err(AgentError::Refused(why.clone())),
            None => Ok(()),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("vpgs").join(name)
    }

    fn save(&self, list: &[VpgRecord]) -> Result<(), AgentError> {
        let reg = VpgRegistry {
            version: VPG_FORMAT_VERSION,
            vpgs: list.to_vec(),
        };
        crate::meta::store(
            &self.state_dir,
            &registry_path(&self.state_dir),
            crate::meta::VPGS,
            &reg,
        )
    }

    /// Every VPG of the registry: those open, and those that could not be opened (kept, so
    /// a save never drops one).
    fn records(&self) -> Vec<VpgRecord> {
        let mut all: Vec<VpgRecord> = self
            .vpgs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|v| {
                let mut r = v.record.clone();
                r.plan = v.plan();
                if let Some(p) = &mut r.protection {
                    p.paused = v.is_paused();
                }
                r
            })
            .collect();
        all.extend(
            self.failed
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .map(|(r, _)| r.clone()),
        );
        all
    }

    /// VPGs that could not be opened, with the reason.
    pub fn failed(&self) -> Vec<(String, String)> {
        self.failed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, (_, why))| (n.clone(), why.clone()))
            .collect()
    }

    fn map_header(&self, volume_bytes: u64, id: u32) -> MapHeader {
        MapHeader {
            granularity: self.cfg.dirty_granularity,
            volume_bytes,
            extent_bytes: EXTENT_DEFAULT.max(self.cfg.dirty_granularity),
            clean: false,
            boot_id: boot_id(),
            settled_seq: 0,
            volume: id,
        }
    }

    fn volume_bytes(&self, name: &str) -> Option<u64> {
        self.volumes
            .list()
            .into_iter()
            .find(|v| v.record.name == name)
            .map(|v| v.record.size_bytes)
    }

    /// Opens a registered VPG: recovery by the rules in `ferry_journal::capture`.
    fn open(self: &Arc<Self>, record: VpgRecord) -> Result<Arc<Vpg>, AgentError> {
        let dir = self.dir(&record.name);
        let jpath = journal_path(&dir);
        let mut notes = Vec::new();
        let opened = MmapStorage::open(&jpath)
            .map_err(|e| e.to_string())
            .and_then(|s| Journal::open(s).map_err(|e| e.to_string()));
        let (journal, jrec, journal_lost) = match opened {
            Ok((j, r)) => (j, r, false),
            Err(why) => {
                // Rule 8: the journal is unreadable.
                let moved = move_aside(&jpath);
                notes.push(format!(
                    "journal {} unreadable ({why}; {moved}): a new one was made and every volume is marked wholly dirty",
                    jpath.display()
                ));
                let g = Geometry::for_data_bytes(record.ring_id, record.journal_bytes);
                let s = MmapStorage::create(&jpath, g.file_bytes())
                    .map_err(|e| AgentError::io("cannot create journal", &jpath, e))?;
                let j =
                    Journal::create(s, g).map_err(|e| AgentError::Refused(format!("cannot format journal: {e}")))?;
                (
                    j,
                    ferry_journal::Recovery {
                        records: 0,
                        stopped_by: ferry_journal::Stop::Empty,
                        holes: vec![],
                    },
                    true,
                )
            }
        };
        let boot = boot_id();
        let mut maps = BTreeMap::new();
        for (i, vol) in record.volumes.iter().enumerate() {
            let id = i as u32 + 1;
            let path = map_path(&dir, vol);
            let opened = MmapStorage::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|s| DirtyMap::open(s, boot).map_err(|e| e.to_string()));
            let (map, rec) = match opened {
                Ok((m, r)) => (m, r),
                Err(why) => {
                    // Rule 7: a map is unreadable.
                    let moved = move_aside(&path);
                    notes.push(format!(
                        "dirty map of volume {vol:?} unreadable ({why}; {moved}): the whole volume is marked dirty"
                    ));
                    let bytes = self.volume_bytes(vol).unwrap_or(0);
                    let m = create_map(&path, self.map_header(bytes, id), true)?;
                    let rec = ferry_journal::MapRecovery {
                        was_clean: false,
                        rebooted: false,
                        extents_marked: 0,
                        settled_seq: 0,
                    };
                    (m, rec)
                }
            };
            if journal_lost {
                map.mark_all();
            }
            maps.insert(id, (Arc::new(map), rec));
        }
        let (capture, rep) = Capture::recover(journal, &jrec, maps);
        let lifecycle = load_lifecycle(&dir, &record)?;
        // At a start a protected VPG waits for its recovery site to confirm the epoch (see
        // `hold_until_confirmed`): from before its drain of dirty regions can begin.
        let confirm = !self.cfg.confirm_epoch.is_zero()
            && record.protection.as_ref().is_some_and(|p| !p.paused)
            && lifecycle.fenced.is_none();
        let vpg = self.runtime(record, dir, capture, lifecycle, confirm);
        vpg.reload_checkpoints();
        log_recovery(&vpg, &jrec, &rep);
        for n in notes {
            error!(vpg = %vpg.record.name, "{n}");
            vpg.cap.push_event(n);
        }
        vpg.cap.collect_events();
        self.attach_all(&vpg);
        Ok(vpg)
    }

    fn runtime(
        self: &Arc<Self>,
        record: VpgRecord,
        dir: PathBuf,
        capture: Capture<MmapStorage>,
        lifecycle: Lifecycle,
        confirming: bool,
    ) -> Arc<Vpg> {
        let record_name = record.name.clone();
        let plan = record.plan.clone();
        let vpg = Arc::new(Vpg {
            members: RwLock::new(
                record
                    .volumes
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        (
                            i as u32 + 1,
                            Attached {
                                name: v.clone(),
                                file: None,
                            },
                        )
                    })
                    .collect(),
            ),
            record,
            dir,
            cap: Arc::new(VpgCapture::new(
                record_name,
                capture,
                self.pool.clone(),
                self.ship_wake.clone(),
            )),
            engine: self.engine.clone(),
            consumer: tokio::sync::Mutex::new(None),
            checkpoints: Mutex::new(VecDeque::new()),
            stop: CancellationToken::new(),
            cfg: self.cfg.clone(),
            lifecycle: Mutex::new(lifecycle),
            ship: Mutex::new(ShipState::default()),
            plan: Mutex::new(plan),
            confirming: std::sync::atomic::AtomicBool::new(confirming),
            sla_met: std::sync::atomic::AtomicBool::new(true),
            opened_ms: now_ms(),
            link_seen: std::sync::atomic::AtomicBool::new(false),
            behind: std::sync::atomic::AtomicBool::new(false),
            behind_checked_ms: std::sync::atomic::AtomicU64::new(0),
            throttle_event_ms: std::sync::atomic::AtomicU64::new(0),
            ack_progress: Mutex::new((0, 0)),
            delta_progress: Mutex::new(DeltaProgress::default()),
            known_changed: Mutex::new(None),
        });
        // A journal with nothing unacknowledged: the recovery site held every captured
        // write when it was opened, so the RPO starts from now, not from creation.
        let st = vpg.journal_stats();
        if st.acked_seq >= st.next_seq && vpg.cap.capture.mode() == Mode::Journaling {
            vpg.ship_update(|s| s.caught_up_ms = now_ms());
        }
        if vpg.record.protection.as_ref().is_some_and(|p| p.throttle_rpo_ms > 0) {
            let weak = Arc::downgrade(&vpg);
            vpg.cap
                .set_throttle(Box::new(move || weak.upgrade().is_some_and(|v| v.behind_now())));
        }
        tokio::spawn(vpg.clone().run_ticker());
        tokio::spawn(vpg.clone().run_drain());
        ticker::spawn_prefaulter(&vpg);
        vpg
    }

    /// Connects each member volume that is online to the VPG: its writes are captured from
    /// now on.
    fn attach_all(&self, vpg: &Arc<Vpg>) {
        let fenced = vpg.fenced();
        let mut members = vpg.members.write().unwrap_or_else(|e| e.into_inner());
        for (&id, m) in members.iter_mut() {
            match self.volumes.get(&m.name) {
                Some(v) => {
                    m.file = Some(v.file());
                    if let Some(why) = &fenced {
                        v.fence(why.clone());
                    }
                    v.set_member(Some((vpg.cap.clone(), id)));
                }
                None => {
                    let msg = format!(
                        "volume {:?} is offline: its writes are not captured until it is back",
                        m.name
                    );
                    warn!(vpg = %vpg.record.name, "{msg}");
                    vpg.cap.push_event(msg);
                }
            }
        }
    }

    /// At a start: a protected VPG's writes wait until its recovery site confirms that it
    /// was not failed over meanwhile (the session opens it, or fences it), for
    /// `confirm_epoch` at most, so that a site that was failed over from is fenced before
    /// it takes a write.
    fn hold_until_confirmed(self: &Arc<Self>, vpg: &Arc<Vpg>) {
        let wait = self.cfg.confirm_epoch;
        if !vpg.confirming.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        for name in &vpg.record.volumes {
            if let Some(v) = self.volumes.get(name) {
                v.hold_writes();
            }
        }
        let (me, weak) = (Arc::downgrade(self), Arc::downgrade(vpg));
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let (Some(me), Some(v)) = (me.upgrade(), weak.upgrade())
                && v.confirming.load(std::sync::atomic::Ordering::Acquire)
            {
                let m = format!(
                    "the recovery site did not confirm epoch {} within {:.0} s of the start: writes are taken without it (were the VPG failed over meanwhile, the sites would diverge)",
                    v.epoch(),
                    wait.as_secs_f64()
                );
                warn!(vpg = %v.record.name, "{m}");
                v.event(m);
                me.confirmed(&v);
            }
        });
    }

    /// The recovery site answered for `vpg` (opened, fenced, unfenced or refused it):
    /// writes held at the start go on (or meet the fence).
    pub fn confirmed(&self, vpg: &Vpg) {
        if vpg.confirming.swap(false, std::sync::atomic::Ordering::AcqRel) {
            for name in &vpg.record.volumes {
                if let Some(v) = self.volumes.get(name) {
                    v.release_writes();
                }
            }
        }
    }

    /// This agent's volumes.
    pub fn volumes(&self) -> &Arc<Volumes> {
        &self.volumes
    }

    /// The VPG whose journal (and stream) is `ring_id`.
    pub fn by_ring(&self, ring_id: u64) -> Option<Arc<Vpg>> {
        self.all().into_iter().find(|v| v.record.ring_id == ring_id)
    }

    /// The recovery site's word on a live failover of `vpg`: fenced, its volumes refuse
    /// writes from now on (reads go on); unfenced, they take writes again. Refused for a
    /// stale epoch.
    pub fn fencing(&self, vpg: &Arc<Vpg>, input: crate::protect::state::Fencing) -> Result<(), String> {
        vpg.apply_fencing(input)?;
        let fenced = vpg.fenced();
        for name in &vpg.record.volumes {
            if let Some(v) = self.volumes.get(name) {
                match &fenced {
                    Some(why) => v.fence(why.clone()),
                    None => v.unfence(),
                }
            }
        }
        Ok(())
    }

    /// Diverged writes kept at this site.
    pub fn diverged(&self) -> crate::diverged::Diverged {
        crate::diverged::Diverged::at(&self.state_dir)
    }

    pub fn get(&self, name: &str) -> Result<Arc<Vpg>, AgentError> {
        self.vpgs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| AgentError::NoVpg(name.into()))
    }

    fn all(&self) -> Vec<Arc<Vpg>> {
        self.vpgs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn list(&self) -> Vec<VpgStatus> {
        self.all().iter().map(|v| v.status()).collect()
    }

    /// The VPGs replicated to a recovery site.
    /// What the shipper's links wait on for work (see [`VpgCapture::wake_shipper`]).
    pub fn ship_wake(&self) -> Arc<tokio::sync::Notify> {
        self.ship_wake.clone()
    }

    pub fn protected(&self) -> Vec<Arc<Vpg>> {
        self.all()
            .into_iter()
            .filter(|v| v.record.protection.is_some())
            .collect()
    }

    /// Pauses or resumes shipping (capture goes on; the journal fills, then dirty tracking
    /// takes over).
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<VpgStatus, AgentError> {
        let _g = self.change.lock().await;
        self.check_frozen()?;
        let vpg = self.get(name)?;
        if vpg.record.protection.is_none() {
            return Err(AgentError::Refused(format!(
                "VPG {name:?} is not replicated (create it with --peer to protect it)"
            )));
        }
        vpg.apply(if paused { Input::Pause } else { Input::Resume })
            .map_err(|why| AgentError::Refused(format!("VPG {name:?}: {why}")))?;
        self.save(&self.records())?;
        Ok(vpg.status())
    }

    /// Changes a VPG's failover plan (members, boot order, scripts, networks); it travels
    /// to the recovery site in the stream.
    pub async fn edit(&self, name: &str, edit: &PlanEdit) -> Result<VpgStatus, AgentError> {
        let _g = self.change.lock().await;
        self.check_frozen()?;
        let vpg = self.get(name)?;
        if edit.is_empty() {
            return Err(AgentError::Refused(
                "nothing to change: give --member, --boot-delay, --pre-script, --post-script, --script-timeout, --test-network or --failover-network".into(),
            ));
        }
        let next = edit.apply(&vpg.plan(), &vpg.record.volumes)?;
        let before = vpg.plan();
        vpg.set_plan(next);
        if let Err(e) = self.save(&self.records()) {
            vpg.set_plan(before);
            return Err(e);
        }
        vpg.event("failover plan changed (`ferry vpg show` lists it)".into());
        Ok(vpg.status())
    }

    /// The VPG a volume is in, if any.
    pub fn vpg_of(&self, volume: &str) -> Option<String> {
        self.records()
            .into_iter()
            .find(|r| r.volumes.iter().any(|v| v == volume))
            .map(|r| r.name)
    }

    pub async fn create(
        self: &Arc<Self>,
        name: &str,
        volumes: &[String],
        journal_bytes: Option<u64>,
        protect: Option<&ProtectArgs>,
        plan: &PlanEdit,
    ) -> Result<VpgStatus, AgentError> {
        self.create_as(name, volumes, journal_bytes, protect, plan, None).await
    }

    /// [`Vpgs::create`] of a VPG that exists already elsewhere: it keeps its lineage and
    /// epoch (`identity`), as reverse protection makes it at the site it failed over to.
    pub async fn create_as(
        self: &Arc<Self>,
        name: &str,
        volumes: &[String],
        journal_bytes: Option<u64>,
        protect: Option<&ProtectArgs>,
        plan: &PlanEdit,
        identity: Option<(Lineage, u64)>,
    ) -> Result<VpgStatus, AgentError> {
        check_vpg_name(name)?;
        let protection = protect.map(|p| p.check()).transpose()?;
        let plan = plan.apply(&Plan::default(), volumes)?;
        let _g = self.change.lock().await;
        self.check_frozen()?;
        if self.vpgs.read().unwrap_or_else(|e| e.into_inner()).contains_key(name)
            || self.failed.read().unwrap_or_else(|e| e.into_inner()).contains_key(name)
        {
            return Err(AgentError::Refused(format!("a VPG named {name:?} already exists")));
        }
        if volumes.is_empty() {
            return Err(AgentError::Refused("a VPG needs at least one --volume".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut vols: Vec<Arc<Volume>> = Vec::new();
        for v in volumes {
            if !seen.insert(v) {
                return Err(AgentError::Refused(format!("volume {v:?} is named twice")));
            }
            if let Some(other) = self.vpg_of(v) {
                return Err(AgentError::Refused(format!(
                    "volume {v:?} is already in VPG {other:?}; a volume belongs to at most one VPG"
                )));
            }
            let vol = self.volumes.get(v).ok_or_else(|| AgentError::NoVolume(v.clone()))?;
            if vol.record.read_only {
                return Err(AgentError::Refused(format!(
                    "volume {v:?} is read-only: there is nothing to capture"
                )));
            }
            vols.push(vol);
        }
        let journal_bytes = journal_bytes.unwrap_or(self.cfg.journal_bytes_default);
        if journal_bytes < (1 << 20) {
            return Err(AgentError::Refused(format!(
                "--journal-size {} is too small; at least 1M",
                human(journal_bytes)
            )));
        }
        let record = VpgRecord {
            name: name.into(),
            volumes: volumes.to_vec(),
            journal_bytes,
            ring_id: random_u64(),
            created_unix_ms: now_ms(),
            lineage: match identity {
                Some((l, _)) => l,
                None => Lineage::new()?,
            },
            epoch: identity.map_or(1, |(_, e)| e),
            plan,
            protection,
        };
        let dir = self.dir(name);
        let made = (|| -> Result<(Capture<MmapStorage>, Lifecycle), AgentError> {
            std::fs::create_dir_all(&dir).map_err(|e| AgentError::io("cannot create VPG directory", &dir, e))?;
            let g = Geometry::for_data_bytes(record.ring_id, journal_bytes);
            let jpath = journal_path(&dir);
            let s = MmapStorage::create(&jpath, g.file_bytes()).map_err(|e| {
                AgentError::io(
                    "cannot create the journal (is the state directory's filesystem full?)",
                    &jpath,
                    e,
                )
            })?;
            let journal =
                Journal::create(s, g).map_err(|e| AgentError::Refused(format!("cannot format journal: {e}")))?;
            let mut maps = BTreeMap::new();
            for (i, v) in vols.iter().enumerate() {
                let id = i as u32 + 1;
                // A protected VPG starts with every block dirty: the drain reads them all
                // into the journal (the initial sync), while new writes are captured.
                let m = create_map(
                    &map_path(&dir, &v.record.name),
                    self.map_header(v.record.size_bytes, id),
                    record.protection.as_ref().is_some_and(|p| !p.preseeded),
                )?;
                maps.insert(id, Arc::new(m));
            }
            let p = record.protection.as_ref();
            let lifecycle = Lifecycle::new(p.is_some(), p.is_some_and(|p| p.preseeded));
            save_lifecycle(&dir, &lifecycle)?;
            Ok((Capture::new(journal, maps), lifecycle))
        })();
        let (capture, lifecycle) = match made {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut list = self.records();
        list.push(record.clone());
        if let Err(e) = self.save(&list) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let vpg = self.runtime(record, dir, capture, lifecycle, false);
        self.attach_all(&vpg);
        vpg.cap.push_event(format!(
            "created with {} volume(s) and a {} journal; capture starts now",
            volumes.len(),
            human(journal_bytes)
        ));
        if let Some(p) = &vpg.record.protection {
            vpg.cap.push_event(format!(
                "protected to {} (priority {}); initial sync of {} begins",
                p.peer,
                p.priority.name(),
                human(vpg.cap.capture.dirty_bytes())
            ));
        }
        info!(vpg = %name, volumes = ?volumes, journal_bytes, "VPG created");
        self.vpgs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.into(), vpg.clone());
        self.ship_wake.notify_waiters();
        Ok(vpg.status())
    }

    /// Deletes a VPG here; returns its record, so the caller can ask the recovery site to
    /// delete the replica too.
    pub async fn delete(&self, name: &str) -> Result<VpgRecord, AgentError> {
        let _g = self.change.lock().await;
        self.check_frozen()?;
        let failed = self.failed.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
        if let Some((record, _)) = failed {
            // A VPG that could not be opened: its record and files go, its volumes take
            // writes again (uncaptured: protect them anew).
            let list: Vec<VpgRecord> = self.records().into_iter().filter(|r| r.name != name).collect();
            self.save(&list)?;
            self.failed.write().unwrap_or_else(|e| e.into_inner()).remove(name);
            for v in record.volumes.iter().filter_map(|v| self.volumes.get(v)) {
                v.unfence();
            }
            let dir = self.dir(name);
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(AgentError::io("VPG removed, but cannot delete its directory", &dir, e));
            }
            info!(vpg = %name, "VPG that could not be opened deleted; its volumes take writes again");
            return Ok(record);
        }
        let vpg = self.get(name)?;
        let record = vpg.record.clone();
        let list: Vec<VpgRecord> = self.records().into_iter().filter(|r| r.name != name).collect();
        self.save(&list)?;
        self.vpgs.write().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.ship_wake.notify_waiters();
        for m in vpg.members.read().unwrap_or_else(|e| e.into_inner()).values() {
            if let Some(v) = self.volumes.get(&m.name) {
                v.set_member(None);
            }
        }
        vpg.stop.cancel();
        let dir = vpg.dir.clone();
        drop(vpg);
        std::fs::remove_dir_all(&dir)
            .map_err(|e| AgentError::io("VPG removed, but cannot delete its directory", &dir, e))?;
        info!(vpg = %name, "VPG deleted");
        Ok(record)
    }

    /// Final sync and clean mark of every VPG (at shutdown, after the NBD sessions ended).
    pub async fn close_all(&self) {
        for v in self.all() {
            v.close().await;
        }
    }
}

fn log_recovery(vpg: &Vpg, jrec: &ferry_journal::Recovery, rep: &CaptureRecovery) {
    let name = &vpg.record.name;
    if rep.was_clean {
        info!(vpg = %name, records = rep.records, "journal opened after a clean stop");
        return;
    }
    let msg = format!(
        "recovered after an unclean stop{}: {} unacknowledged record(s), {} hole(s) made void, {} record(s) after the last sync marked dirty, {} activity extent(s) marked dirty; journal ended: {:?}",
        if rep.rebooted {
            " across a reboot (power loss)"
        } else {
            ""
        },
        rep.records,
        rep.voids,
        rep.unsettled_marked,
        rep.extents_marked,
        jrec.stopped_by
    );
    warn!(vpg = %name, "{msg}");
    vpg.cap.push_event(msg);
    for d in &rep.damaged {
        let m = format!("damaged journal record voided and its range marked dirty: {d}");
        error!(vpg = %name, "{m}");
        vpg.cap.push_event(m);
    }
    if rep.foreign > 0 {
        vpg.cap.push_event(format!(
            "{} record(s) name a volume this VPG does not have; skipped",
            rep.foreign
        ));
    }
}
