-- Auto-route chest CT to the PACS AI node (modality "node" in orthanc.json).
--
-- OnStableStudy fires when a study has received nothing for StableAge seconds. We forward each CT
-- series once and mark it with the user metadata "AiNodeSent": the AI results the node sends back
-- (SEG, SR, Secondary Captures) land in the same study and make it stable again, and without the mark
-- the CT would be sent back to the node in a loop. New CT series of the study are still forwarded.
--
-- RestApiPost('/modalities/node/store', id) rather than SendToModality(): on Orthanc 1.10
-- SendToModality inside OnStableStudy fails with "Unable to read attachment" (REAL-PEERS.md).

local MARK = 'AiNodeSent'

local function already_sent(seriesId)
  local names = ParseJson(RestApiGet('/series/' .. seriesId .. '/metadata'))
  for _, name in ipairs(names) do
    if name == MARK then
      return true
    end
  end
  return false
end

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local sent = 0
  for _, s in ipairs(series) do
    if s['MainDicomTags']['Modality'] == 'CT' and not already_sent(s['ID']) then
      RestApiPost('/modalities/node/store', s['ID'])
      RestApiPut('/series/' .. s['ID'] .. '/metadata/' .. MARK, 'yes')
      sent = sent + 1
    end
  end
  print('ai-node autoroute: study ' .. studyId .. ' stable, CT series sent to node: ' .. sent)
end
