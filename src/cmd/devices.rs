//! DEVICE_LIST and DEVICE_REMOVE: a user's devices are visible and revocable.

use super::{Ctx, Origin, Outcome, refuse};
use crate::outbox::FrameKind;
use crate::protocol::ErrorCode;
use crate::protocol::response::{self, DeviceEntry};
use crate::session::CloseReason;
use crate::store::UserId;

pub fn list(ctx: &mut Ctx, o: &mut Origin, me: UserId) -> Outcome {
    let online = ctx.world.user(me).map(|u| u.devices.clone()).unwrap_or_default();
    let devices: Vec<DeviceEntry> = ctx
        .store
        .devices_of(me)?
        .into_iter()
        .map(|d| DeviceEntry {
            device_id: d.client_id,
            online: online.contains(&d.id),
            current: d.id == o.device,
            name: d.name,
            last_seen_ms: d.last_seen_ms.max(0) as u64,
        })
        .collect();
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::device_list(b, rid, &devices));
    Ok(())
}

/// Forgets another of the user's devices; its connections are told and closed once the
/// removal has committed.
pub fn remove(ctx: &mut Ctx, o: &mut Origin, me: UserId, client_id: u64) -> Outcome {
    let Some(device) = ctx.store.find_device(me, client_id)? else {
        return refuse(ErrorCode::NoSuchDevice, "you have no device with that id");
    };
    if device == o.device {
        return refuse(ErrorCode::InvalidArgument, "this connection's own device cannot be removed; log out instead");
    }
    ctx.store.remove_device(device)?;
    for token in ctx.world.sessions_of_device(me, device) {
        ctx.outbox.stage(token, FrameKind::Push, |b| {
            response::error(b, 0, ErrorCode::NoSuchDevice, "this device was removed by another of your devices")
        });
        ctx.world.close_after_commit.push((token, CloseReason::DeviceRemoved));
    }
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::ok(b, rid));
    Ok(())
}
